"""`python -m labtools report`: build/report/index.html from the last `make lab` run.

A summary table (catalog, backend, time and status per notebook, and notebook 06's headline figures: its
tables, sentences and key charts), linking each executed notebook as HTML (nbconvert, images embedded with
alt text, no network needed to open it).
"""

import argparse
import copy
import html
import json
import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from utils.paths import BUILD_DIR, project_path

REPORT_DIR = BUILD_DIR / "report"
RUN_SUMMARY = "run.json"  # written by `labtools notebooks` beside the executed notebooks
HEADLINE_TAG = "report"  # cells whose outputs are a notebook's headline figures
DECISION_LINE = re.compile(r"^(Catalog|Backend) 'auto': .*$", flags=re.M)
HEADING = re.compile(r"^#{1,3} (.+)$", flags=re.M)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TF Serving lab: run report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; vertical-align: top; }}
td.ok {{ color: #060; }} td.failed {{ color: #a00; font-weight: bold; }}
pre {{ background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .85rem; }}
div.headline {{ margin: 1rem 0; }} div.headline table {{ width: auto; }} div.headline img {{ max-width: 100%; }}
</style></head><body>
<h1>TF Serving lab: run report</h1>
<p>Catalog <b>{catalog}</b>; {count} notebooks in {seconds:.0f} s.</p>
<table><thead><tr><th>notebook</th><th>decisions</th><th>seconds</th><th>status</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{headlines}
</body></html>
"""


def text_outputs(cell):
    """The text a code cell printed or returned."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
    return "".join(parts)


def decisions(notebook):
    """The lines in which the notebook said what 'auto' chose (catalog, backend)."""
    return [match.group(0) for cell in notebook.cells for match in DECISION_LINE.finditer(text_outputs(cell))]


def image_alt(output, heading):
    """An image output's alt text: the one the notebook gave it (utils.plots.show), else where it was drawn."""
    alt = output.get("metadata", {}).get("image/png", {}).get("alt")
    return alt or f"Figure drawn in the section '{heading}'"


def image_outputs(notebook):
    """(output, alt text) of every PNG image a notebook's cells displayed."""
    heading, images = "the notebook's start", []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            titles = HEADING.findall(cell.source)
            heading = titles[-1] if titles else heading
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                images.append((output, image_alt(output, heading)))
    return images


def img_tag(output, alt):
    return f'<img src="data:image/png;base64,{output.data["image/png"].strip()}" alt="{html.escape(alt)}">'


def with_alt_text(notebook):
    """A copy of `notebook` whose images carry alt text in the HTML nbconvert writes (its templates drop it):
    each PNG output also gets a text/html form, an <img> with its alt, which HTML export prefers."""
    notebook = copy.deepcopy(notebook)
    for output, alt in image_outputs(notebook):
        output.data["text/html"] = img_tag(output, alt)
    return notebook


def render_output(output):
    """One output of a headline cell as HTML: printed lines as a paragraph, tables and charts as they are."""
    if output.output_type == "stream":
        return "".join(f"<p>{html.escape(line)}</p>" for line in output.text.splitlines() if line.strip())
    data = output.get("data", {})
    if "text/html" in data:
        return data["text/html"]
    if "text/plain" in data:
        return f"<pre>{html.escape(data['text/plain'])}</pre>"
    return ""


def headline_figures(notebook):
    """The HTML of every output of the cells tagged `report`, in order."""
    return ["".join(render_output(o) for o in c.get("outputs", [])) for c in notebook.cells
            if HEADLINE_TAG in c.metadata.get("tags", [])]


def write_report(executed_dir, report_dir=REPORT_DIR):
    """Write report_dir/index.html and one HTML page per executed notebook; returns the index's path."""
    executed_dir, report_dir = Path(executed_dir), Path(report_dir)
    summary = json.loads((executed_dir / RUN_SUMMARY).read_text())
    report_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = ""  # opens offline: no scripts from a CDN
    exporter.require_js_url = ""
    rows, headlines = [], []
    for run in summary["runs"]:
        notebook = nbformat.read(executed_dir / run["name"], as_version=4)
        page = Path(run["name"]).with_suffix(".html").name
        notebook = with_alt_text(notebook)
        body, _ = exporter.from_notebook_node(notebook)
        (report_dir / page).write_text(body, encoding="utf-8")
        status = "ok" if run["ok"] else "failed"
        said = "<br>".join(html.escape(line) for line in decisions(notebook)) or "&nbsp;"
        error = f"<pre>{html.escape(run['error'])}</pre>" if run["error"] else ""
        rows.append(f'<tr><td><a href="{page}">{html.escape(run["name"])}</a>{error}</td><td>{said}</td>'
                    f'<td>{run["seconds"]:.1f}</td><td class="{status}">{status}</td></tr>')
        figures = [f'<div class="headline">{figures}</div>' for figures in headline_figures(notebook) if figures]
        if figures:
            headlines.append(f"<h3>{html.escape(run['name'])}</h3>{''.join(figures)}")
    section = (f"<h2>Headline figures</h2>\n{''.join(headlines)}" if headlines else "")
    index = report_dir / "index.html"
    index.write_text(PAGE.format(catalog=html.escape(summary["catalog"]), count=len(summary["runs"]),
                                 seconds=summary["seconds"], rows="\n".join(rows), headlines=section),
                     encoding="utf-8")
    return index


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools report", description=__doc__)
    parser.add_argument("--executed-dir", default="build/executed", help="relative to the project root")
    args = parser.parse_args(argv)
    executed_dir = project_path(args.executed_dir)
    if not (executed_dir / RUN_SUMMARY).exists():
        parser.exit(2, f"error: no run summary in {executed_dir}: run `make lab` first.\n")
    print(write_report(executed_dir))
    return 0
