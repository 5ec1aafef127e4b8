"""Every notebook run in JupyterLab in headless Chromium, as a learner runs it (issue 7; issue 19: each
runs from a copy on ports and build directories of its own, 06 asking for fewer trials and requests).

JupyterLab starts from this interpreter on loopback, rooted at the project, with the
offline catalog (LAB_CATALOG=offline). Each notebook is opened in the Notebook editor
on the lab's kernel and run with "Run All", or, for notebooks 04 and 06 (which start
servers), with "Restart Kernel and Run All Cells" twice in a row. After each run: every
code cell ran, no error or stderr output, every figure rendered as an image, no raw
carriage returns, no widget errors. The report check loads an HTML report from disk.

In build/browser/: screenshots/ (on failure, the window at the failing cell and the
page's text; for the record, each notebook's first figure and first line that scrolls
sideways, "-view-"), executed/ (the notebooks as JupyterLab held them after the first
run), runs.jsonl (seconds, problems, wide cells and images per run), jupyterlab.log.
Nothing is saved over the committed notebooks (checked last).
"""

import hashlib
import html
import json
import os
import shutil
import subprocess
import time
import urllib.request

import nbformat
import pytest
from selenium.webdriver.common.selenium_manager import SeleniumManager

from jupyterlab_driver import (
    BROWSER_BUILD_DIR, PROJECT_ROOT, SCREENSHOTS_DIR, BrowserMissing, JupyterLab, LabPage, Problem, browser_binaries,
    check_report, notebook_problems, page_problems, start_chromium, wide_cells)
from labtools.kernel import KERNEL_NAME
from labtools.report import RUN_SUMMARY
from labtools.report import write_report as write_lab_report

pytestmark = pytest.mark.browser

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = sorted(path.name for path in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
# The stale-server case: a second "Restart Kernel and Run All" finds the first run's servers stopped.
RESTARTED_NOTEBOOKS = [name for name in NOTEBOOKS if name[:2] in ("04", "06")]
EXECUTED_DIR = BROWSER_BUILD_DIR / "executed"
# JupyterLab opens copies of the notebooks whose parameters cells differ from the committed ones:
COPIES_DIR = BROWSER_BUILD_DIR / "notebooks"
# - `make test` runs this module beside nbval (two pytest-xdist groups at once), so the copies use ports and
#   build directories of their own: neither run sees the other's servers or files;
OWN_PORTS_AND_DIRS = {
    "models_dir": "build/browser/models", "configs_dir": "build/browser/configs",
    "scale_out_dir": "build/browser/scale_out", "grpc_port": 18500, "rest_port": 18501, "prometheus_port": 19090,
    "haproxy_metrics_port": 18404, "pod_ports_start": 19600,
}
# - nbval runs every notebook at its committed size and compares the outputs; here the front end needs the
#   same cells, not the same amount of work: 06 asks for fewer trials and requests (every cell, figure and
#   assert still runs; it still runs twice after a restart). 06 at this size ran in 95 s against 206 s at
#   its committed size; 07 gained nothing from a shorter load step (its time is pod start-ups).
REDUCED_PARAMETERS = {
    "06_production.ipynb": {"warmup_trials": 1, "load_seconds": 4, "concurrency_levels": [1, 4, 16],
                            "requests_per_level": 32, "benchmark_records": 60},
}
RUNS_LOG = BROWSER_BUILD_DIR / "runs.jsonl"
LAB_ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    "LAB_CATALOG": "offline",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def working_tree_state():
    """`git status` of the project and a hash of every file under notebooks/ (checkpoints included)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True)
    hashes = {str(path.relative_to(PROJECT_ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
              for path in sorted(NOTEBOOKS_DIR.rglob("*")) if path.is_file()}
    return {"git status": status.stdout if status.returncode == 0 else None, "notebooks/": hashes}


def committed_image_count(name):
    """How many figures notebook `name` makes: the image/png outputs its committed version holds."""
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.fixture(scope="module", autouse=True)
def fresh_browser_build_dir():
    """Nothing left from an earlier run: run log, executed notebooks, screenshots."""
    BROWSER_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    RUNS_LOG.unlink(missing_ok=True)
    for directory in [EXECUTED_DIR, SCREENSHOTS_DIR]:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def working_tree_before():
    return working_tree_state()


@pytest.fixture(scope="module")
def binaries():
    try:
        return browser_binaries()
    except BrowserMissing as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture(scope="module")
def driver(binaries, tmp_path_factory):
    chromium, chromedriver = binaries
    work = tmp_path_factory.mktemp("chromium")
    browser = start_chromium(chromium, chromedriver, work / "profile", BROWSER_BUILD_DIR / "chromedriver.log")
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def jupyterlab(working_tree_before, tmp_path_factory):
    lab = JupyterLab(PROJECT_ROOT, tmp_path_factory.mktemp("jupyterlab"), BROWSER_BUILD_DIR / "jupyterlab.log", LAB_ENV)
    lab.start()
    try:
        with urllib.request.urlopen(lab.url(f"/api/kernelspecs?token={lab.token}")) as response:
            kernels = json.load(response)["kernelspecs"]
        if KERNEL_NAME not in kernels:
            pytest.fail(f"JupyterLab has no {KERNEL_NAME!r} kernel (it has {sorted(kernels)}): run `make setup`.",
                        pytrace=False)
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def lab_page(driver, jupyterlab):
    page = LabPage(driver, jupyterlab)
    page.load()
    return page


def run_and_check(page, name, command, label, expected_images, confirm_restart=False):
    """Run `command` on the open notebook; returns (facts, failure sentence or None), with evidence saved."""
    started = time.monotonic()
    outcome = page.run_command(command, confirm_restart=confirm_restart)
    seconds = time.monotonic() - started
    facts = page.page_facts()
    problems = notebook_problems(facts, expected_images)
    if "error" in outcome:
        problems.insert(0, Problem("command", None, outcome["error"]))
    stem = f"{name.removesuffix('.ipynb')}-{label}"
    first_cell_per_check = {check: cell for check, cell, _ in reversed(problems)}
    evidence = [page.save_evidence(f"{stem}-{check}", cell) for check, cell in first_cell_per_check.items()]
    with RUNS_LOG.open("a") as log:
        log.write(json.dumps({"notebook": name, "run": label, "seconds": round(seconds, 1),
                              "problems": [message for _, _, message in problems], "wide cells": wide_cells(facts),
                              "images": [image for cell in facts["cells"] for image in cell["images"]]}) + "\n")
    if not problems:
        return facts, None
    screenshots = ", ".join(str(path.relative_to(PROJECT_ROOT)) for path in evidence)
    messages = " ".join(message for _, _, message in problems)
    return facts, f"{name} after {label}: {messages} Screenshots: {screenshots}"


def save_views(page, name, facts):
    """Screenshots for the record: the first figure, and the first cell whose code or output scrolls sideways."""
    stem = name.removesuffix(".ipynb")
    first_figure = next((i for i, cell in enumerate(facts["cells"]) if cell["images"]), None)
    wide = wide_cells(facts)
    first_wide = min(wide["code"] + wide["output"], default=None)
    for view, cell in [("figure", first_figure), ("wide-line", first_wide)]:
        if cell is not None:
            page.save_evidence(f"{stem}-view-{view}", cell)


def save_executed(notebook, path):
    """Write the notebook as JupyterLab holds it after the run (its null attachments dropped: nbformat wants none)."""
    for cell in notebook["cells"]:
        if cell.get("attachments", {}) is None:
            del cell["attachments"]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(notebook)
    nbformat.write(nbformat.from_dict(notebook), path)


def open_notebook(page, path):
    kernel = page.open_notebook(path)
    assert kernel == KERNEL_NAME, f"{path} opened on kernel {kernel!r}, not the lab's {KERNEL_NAME!r}."


def test_selenium_manager_is_never_asked(binaries, tmp_path, monkeypatch):
    def refuse(self, args):
        raise AssertionError(f"Selenium Manager was asked for {args}")

    monkeypatch.setattr(SeleniumManager, "binary_paths", refuse)
    browser = start_chromium(*binaries, tmp_path / "profile", tmp_path / "chromedriver.log")
    browser.quit()


def test_missing_chromium_is_one_sentence_naming_make_setup(monkeypatch):
    monkeypatch.setenv("LAB_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(BrowserMissing) as missing:
        browser_binaries()
    assert str(missing.value) == ("No chromium found ($LAB_CHROMIUM='/nonexistent/chromium'): run `make setup`, "
                                  "which installs Chromium and chromedriver, or set LAB_CHROMIUM to the program.")


def test_checks_catch_every_kind_of_failure(lab_page):
    """A notebook that fails each check in turn, so none of the checks below can pass vacuously."""
    canary = BROWSER_BUILD_DIR / "canary" / "canary.ipynb"
    canary.parent.mkdir(parents=True, exist_ok=True)
    sources = [
        'import sys\nprint("on stderr", file=sys.stderr)',
        'display({"text/plain": "10%\\r20%"}, raw=True)',
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        'from IPython.display import Image\nImage(data=b"not a png", format="png")',
        'raise RuntimeError("canary")',
        'print("never runs")',
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": KERNEL_NAME, "language": "python"}
    nbformat.write(notebook, canary)
    open_notebook(lab_page, str(canary.relative_to(PROJECT_ROOT)))
    try:
        lab_page.run_command("notebook:run-all-cells")
        problems = notebook_problems(lab_page.page_facts(), expected_images=2)
    finally:
        lab_page.close_notebook()
    assert sorted((check, cell) for check, cell, _ in problems) == [
        ("error", 4), ("figures", 2), ("figures", 3), ("not-run", 5), ("progress", 1), ("stderr", 0)]


def set_parameters(notebook, values):
    """The notebook with its `parameters` cell's assignments of `values` replaced (trailing comments kept)."""
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    lines, missing = cell.source.splitlines(), dict(values)
    for i, line in enumerate(lines):
        name, equals, rest = line.partition(" = ")
        if equals and name in missing:
            comment = rest[rest.index("  #"):] if "  #" in rest else ""
            lines[i] = f"{name} = {missing.pop(name)!r}{comment}"
    assert not missing, f"the parameters cell assigns none of {sorted(missing)}"
    cell.source = "\n".join(lines)
    return notebook


def committed_parameters(name):
    """{name: value} that notebook `name`'s committed parameters cell assigns."""
    (cell,) = [c for c in nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells
               if "parameters" in c.metadata.get("tags", [])]
    namespace = {}
    exec(cell.source, namespace)
    return {key: value for key, value in namespace.items() if key != "__builtins__"}


def browser_parameters(name):
    """What the browser's copy of notebook `name` assigns differently: its own ports and directories (those
    its parameters cell has), and for 06 a smaller run."""
    committed = committed_parameters(name)
    own = {key: value for key, value in OWN_PORTS_AND_DIRS.items() if key in committed}
    return {**own, **REDUCED_PARAMETERS.get(name, {})}


def notebook_to_run(name):
    """The path JupyterLab opens for notebook `name`: its copy under build/browser/notebooks/."""
    copy = COPIES_DIR / name
    copy.parent.mkdir(parents=True, exist_ok=True)
    notebook, values = nbformat.read(NOTEBOOKS_DIR / name, as_version=4), browser_parameters(name)
    nbformat.write(set_parameters(notebook, values) if values else notebook, copy)
    return str(copy.relative_to(PROJECT_ROOT))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_copies_change_only_the_parameters_they_name(name):
    values = browser_parameters(name)
    committed = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    copy = set_parameters(nbformat.read(NOTEBOOKS_DIR / name, as_version=4), values)
    changed = [i for i, (a, b) in enumerate(zip(committed.cells, copy.cells)) if a.source != b.source]
    assert [committed.cells[i].metadata.get("tags") for i in changed] == ([["parameters"]] if values else [])
    namespace = {}
    exec(copy.cells[changed[0]].source if changed else "", namespace)
    assert {key: namespace[key] for key in values} == values


def test_copies_share_no_port_or_directory_with_the_committed_notebooks():
    """Every port and build directory a parameters cell names is one the browser's copies replace."""
    for name in NOTEBOOKS:
        shared = [key for key, value in committed_parameters(name).items()
                  if (key.endswith("_port") or key.endswith("_dir") and str(value).startswith("build/")
                      or key.endswith("ports_start")) and key not in OWN_PORTS_AND_DIRS]
        assert shared == [], f"{name}: add {shared} to OWN_PORTS_AND_DIRS"


def runs_for(name):
    """Run All, or for notebooks 04 and 06 "Restart Kernel and Run All Cells" twice in a row (the same checks apply)."""
    if name in RESTARTED_NOTEBOOKS:
        return [("notebook:restart-run-all", f"restart-run-all-{attempt}", True) for attempt in (1, 2)]
    return [("notebook:run-all-cells", "run-all", False)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_clean_in_jupyterlab(lab_page, name):
    """In order 01, 02, ...: later notebooks use files earlier ones make (03: models, 04: configs).

    Each runs from its copy (`notebook_to_run`); 04 and 06 twice after a restart.
    """
    open_notebook(lab_page, notebook_to_run(name))
    failures = []
    try:
        for attempt, (command, label, confirm_restart) in enumerate(runs_for(name)):
            facts, failure = run_and_check(lab_page, name, command, label, committed_image_count(name), confirm_restart)
            failures.append(failure)
            if attempt == 0:
                save_views(lab_page, name, facts)
                save_executed(facts["notebook"], EXECUTED_DIR / name)
    finally:
        lab_page.close_notebook()
    assert not any(failures), " ".join(filter(None, failures))


def write_report(report_dir, title, pages, figure=None):
    """A minimal report: index.html with a table linking `pages` {label: html file name} and an optional figure."""
    rows = "".join(f'<tr><td><a href="{html.escape(file)}">{html.escape(label)}</a></td></tr>'
                   for label, file in pages.items())
    image = f'<img src="{html.escape(figure)}" alt="figure">' if figure else ""
    index = report_dir / "index.html"
    index.write_text(f"<!doctype html><title>{html.escape(title)}</title><table>{rows}</table>{image}")
    return index


def test_report_check_names_a_broken_image_a_missing_file_and_a_missing_anchor(driver, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    index = write_report(tmp_path, "broken", {"missing": "missing.html", "section": "#nowhere"}, figure="broken.png")
    with pytest.raises(AssertionError) as failure:
        check_report(driver, index, screenshots_dir=tmp_path)
    assert str(failure.value) == (
        f"report {index}: {index.as_uri()}: image 'broken.png' did not render. "
        f"{index.as_uri()}: link {(tmp_path / 'missing.html').as_uri()} names no file. "
        f"{index.as_uri()}: link #nowhere names no element on the page. Screenshot: {tmp_path / 'report-index.png'}")


def test_report_page_that_does_not_load_is_named_with_the_browser_error(driver, tmp_path):
    absent = (tmp_path / "absent.html").as_uri()
    assert page_problems(driver, absent) == [f"{absent} did not load (ERR_FILE_NOT_FOUND)."]


@pytest.fixture(scope="module")
def lab_report(tmp_path_factory):
    """make lab's report (`labtools.report`), written for the notebooks executed in the browser above."""
    executed = sorted(EXECUTED_DIR.glob("*.ipynb"))
    if [path.name for path in executed] != NOTEBOOKS:
        pytest.fail(f"The notebook runs above saved {[p.name for p in executed]} in {EXECUTED_DIR}, not all of "
                    f"{NOTEBOOKS}: see their failures.", pytrace=False)
    runs = [json.loads(line) for line in RUNS_LOG.read_text().splitlines()]
    summary = {"catalog": os.environ.get("LAB_CATALOG", "offline"), "seconds": sum(r["seconds"] for r in runs),
               "runs": [{"name": path.name, "ok": True, "error": "", "log": "",
                         "seconds": sum(r["seconds"] for r in runs if r["notebook"] == path.name)}
                        for path in executed]}
    (EXECUTED_DIR / RUN_SUMMARY).write_text(json.dumps(summary))
    return write_lab_report(EXECUTED_DIR, tmp_path_factory.mktemp("report"))


def test_report_links_resolve_and_images_render(driver, lab_report):
    check_report(driver, lab_report)


def test_working_tree_is_unchanged(working_tree_before):
    assert working_tree_state() == working_tree_before
