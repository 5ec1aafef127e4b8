"""The notebooks' lesson code and utils' copies of it must not drift apart; the house template.

The template is checked one rule at a time, as tensorflow/docs' nblint does: each rule is a function
that returns what is wrong with a notebook, or None. Each rule is also shown to catch a notebook that
breaks it, so no rule passes by construction.
"""

import inspect
import re

import nbformat
import pytest

from conftest import PROJECT_ROOT
from utils import catalog, deploy, images, serving, warmup

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LAB_KERNEL = "tfserving-lab"
MAX_CODE_LINE = 100  # fits a notebook's width in JupyterLab without scrolling sideways
MAX_CELL_LINES = 30  # a cell a learner reads at once, ending in its result
# A ratio typed into prose ("2x", "tenfold", "about 3 times"): a measured figure comes from a cell.
NUMBER_WORDS = "two|three|four|five|six|seven|eight|nine|ten|twenty|hundred|thousand"
HAND_WRITTEN_RATIO = re.compile(rf"\b\d+(?:\.\d+)?\s?[x×](?![\w-])|\b(?:{NUMBER_WORDS})fold\b"
                                rf"|\b(?:about|roughly|nearly) (?:\d+(?:\.\d+)?|{NUMBER_WORDS}) times\b", re.I)


def code_cell_defining(notebook_name, definition):
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / notebook_name, as_version=4)
    cells = [c.source for c in notebook.cells if c.cell_type == "code" and c.source.startswith(definition)]
    assert len(cells) == 1, f"{notebook_name} should define {definition!r} in exactly one cell"
    return cells[0]


@pytest.mark.parametrize("notebook_name, obj", [
    ("01_classify_images.ipynb", catalog.load_model),
    ("02_serving_signatures.ipynb", serving.ServingModule),
    ("02_serving_signatures.ipynb", images.image_size),
    ("02_serving_signatures.ipynb", images.png_of_zeros),
    ("03_export_savedmodel.ipynb", serving.export_servable),
    ("04_deploy.ipynb", deploy.models_config),
    ("04_deploy.ipynb", deploy.monitoring_config),
    ("06_production.ipynb", warmup.write_warmup_requests),
], ids=lambda value: getattr(value, "__name__", value))
def test_utils_copy_equals_the_notebook_cell(notebook_name, obj):
    definition = f"{'class' if inspect.isclass(obj) else 'def'} {obj.__name__}"
    assert code_cell_defining(notebook_name, definition).strip() == inspect.getsource(obj).strip()


# --- the house template, one rule per function ---------------------------------------------------

def markdown_of(notebook):
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")


def section(markdown, heading):
    """The text under a `## heading`, up to the next `## ` heading (None when absent)."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    return match.group(1) if match else None


def parameters_cells(notebook):
    return [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]


def one_h1(notebook):
    count = len(re.findall(r"^# ", markdown_of(notebook), flags=re.M))
    return None if count == 1 else f"{count} H1 headings, expected one"


def starts_with_title_and_overview(notebook):
    first = notebook.cells[0] if notebook.cells else None
    if first is None or first.cell_type != "markdown" or not first.source.startswith("# "):
        return "the first cell is not the H1 title"
    after_title = first.source.split("\n", 1)[1] if "\n" in first.source else ""
    overview = re.split(r"^(?:\d+\. |#)", after_title, maxsplit=1, flags=re.M)[0].strip()
    return None if overview else "no overview paragraph between the title and the objectives"


def objectives_match_sections(notebook):
    markdown = markdown_of(notebook)
    objectives = re.findall(r"^(\d+)\. ", markdown.split("## Setup")[0], flags=re.M)
    sections = re.findall(r"^## (\d+)\. ", markdown, flags=re.M)
    if not objectives:
        return "no numbered objectives before Setup"
    return None if objectives == sections else f"objectives {objectives} but sections {sections}"


def setup_before_parameters(notebook):
    headings = [i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown" and "## Setup" in c.source]
    parameters = [notebook.cells.index(c) for c in parameters_cells(notebook)]
    if not headings:
        return "no Setup section"
    return None if parameters and headings[0] < parameters[0] else "the parameters cell does not follow Setup"


def one_parameters_cell(notebook):
    count = len(parameters_cells(notebook))
    return None if count == 1 else f"{count} cells tagged 'parameters', expected one"


def parameters_are_commented(notebook):
    for cell in parameters_cells(notebook):
        for line in cell.source.splitlines():
            if not re.match(r"^\w+ = .+  # .+", line):
                return f"parameter without a comment: {line!r}"
    return None


def summary_section(notebook):
    return None if section(markdown_of(notebook), "Summary") is not None else "no Summary section"


def summary_says_next(notebook):
    summary = section(markdown_of(notebook), "Summary")
    return None if summary and "**Next:**" in summary else "the Summary does not say **Next:**"


def exercises_after_summary(notebook):
    markdown = markdown_of(notebook)
    summary, exercises = markdown.find("## Summary"), markdown.find("## Exercises")
    return None if -1 < summary < exercises else "no Exercises section after the Summary"


def code_lines_fit(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if len(line) > MAX_CODE_LINE:
                    return f"a code line of {len(line)} characters: {line[:40]!r}"
    return None


def code_cells_are_short(notebook):
    for cell in notebook.cells:
        lines = len(cell.source.splitlines())
        if cell.cell_type == "code" and lines > MAX_CELL_LINES:
            return f"a code cell of {lines} lines: {cell.source[:40]!r}"
    return None


def no_hand_written_ratios(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            prose = re.sub(r"`[^`]*`", "", cell.source)  # code spans are names, not figures
            if match := HAND_WRITTEN_RATIO.search(prose):
                return f"a ratio typed into prose: {match.group(0)!r} in {cell.source[:40]!r}"
    return None


def solutions_cover_exercises(notebook):
    """Every numbered exercise has a worked solution (cells tagged `solution`, under `## Solutions`)."""
    exercises = len(re.findall(r"^\d+\. ", section(markdown_of(notebook), "Exercises") or "", flags=re.M))
    solved = sum("solution" in c.metadata.get("tags", []) for c in notebook.cells)
    if section(markdown_of(notebook), "Solutions") is None:
        return "no Solutions section"
    return None if exercises and solved >= exercises else f"{exercises} exercises but {solved} solution cells"


def lab_kernel(notebook):
    name = notebook.metadata.get("kernelspec", {}).get("name")
    return None if name == LAB_KERNEL else f"kernel {name!r}, expected {LAB_KERNEL!r}"


def no_stderr_outputs(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code" and any(o.get("name") == "stderr" for o in cell.outputs):
            return f"stderr in {cell.source[:40]!r}"
    return None


def no_error_outputs(notebook):
    for cell in notebook.cells:
        if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs):
            return f"an error in {cell.source[:40]!r}"
    return None


RULES = [one_h1, starts_with_title_and_overview, objectives_match_sections, setup_before_parameters,
         one_parameters_cell, parameters_are_commented, summary_section, summary_says_next,
         exercises_after_summary, code_lines_fit, code_cells_are_short, no_hand_written_ratios, lab_kernel,
         no_stderr_outputs, no_error_outputs]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_notebook_follows_the_house_template(path, rule):
    assert rule(nbformat.read(path, as_version=4)) is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_every_exercise_has_a_worked_solution(path):
    assert solutions_cover_exercises(nbformat.read(path, as_version=4)) is None


def template_notebook():
    """The smallest notebook that keeps every rule."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(cells=[
        md("# Title\n\nWhat this notebook does.\n\n1. First objective\n2. Second objective"),
        md("## Setup"),
        code("import json"),
        code('port = 8501  # the REST port', metadata={"tags": ["parameters"]}),
        md("## 1. First"), code("1 + 1"), md("## 2. Second"), code("2 + 2"),
        md("## Summary\n\n- A point.\n\n**Next:** the next notebook."),
        md("## Exercises\n\n1. Try it."),
        md("## Solutions"),
        code("2 + 2", metadata={"tags": ["solution"]}),
    ])
    notebook.metadata["kernelspec"] = {"name": LAB_KERNEL, "display_name": "lab", "language": "python"}
    return notebook


def without(text):
    """A breakage: drop `text` from every markdown cell."""
    def breaking(notebook):
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                cell.source = cell.source.replace(text, "")
    return breaking


def retag(tags):
    def breaking(notebook):
        notebook.cells[3].metadata["tags"] = tags
    return breaking


def add_cell(cell):
    return lambda notebook: notebook.cells.append(cell)


BREAKAGES = {
    one_h1: add_cell(nbformat.v4.new_markdown_cell("# A second title")),
    starts_with_title_and_overview: without("\n\nWhat this notebook does."),
    objectives_match_sections: without("## 2. Second"),
    setup_before_parameters: without("## Setup"),
    one_parameters_cell: retag([]),
    parameters_are_commented: lambda nb: setattr(nb.cells[3], "source", "port = 8501"),
    summary_section: without("## Summary"),
    summary_says_next: without("**Next:**"),
    exercises_after_summary: without("## Exercises"),
    code_lines_fit: lambda nb: setattr(nb.cells[2], "source", "x = " + "1 + " * 40 + "1"),
    code_cells_are_short: lambda nb: setattr(nb.cells[2], "source", "\n".join(["x = 1"] * 31)),
    no_hand_written_ratios: lambda nb: setattr(nb.cells[4], "source", "## 1. First\n\ngRPC is about 2x faster."),
    solutions_cover_exercises: lambda nb: nb.cells[-1].metadata.update(tags=[]),
    lab_kernel: lambda nb: nb.metadata["kernelspec"].update(name="python3"),
    no_stderr_outputs: lambda nb: nb.cells[2].outputs.append(
        nbformat.v4.new_output("stream", name="stderr", text="Traceback")),
    no_error_outputs: lambda nb: nb.cells[2].outputs.append(
        nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])),
}


def test_every_rule_has_a_breakage():
    assert set(BREAKAGES) == {*RULES, solutions_cover_exercises}


def test_the_template_notebook_keeps_every_rule():
    notebook = template_notebook()
    rules = [*RULES, solutions_cover_exercises]
    assert {rule.__name__: rule(notebook) for rule in rules} == {rule.__name__: None for rule in rules}


@pytest.mark.parametrize("rule", [*RULES, solutions_cover_exercises], ids=lambda rule: rule.__name__)
def test_each_rule_catches_a_notebook_that_breaks_it(rule):
    notebook = template_notebook()
    BREAKAGES[rule](notebook)
    assert rule(notebook) is not None


def committed_output_texts():
    """Every text output of every committed notebook (what nbval compares, after sanitizing)."""
    texts = []
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                texts.append(output.get("text", ""))
                texts += [value for key, value in output.get("data", {}).items()
                          if key.startswith("text/") and isinstance(value, str)]
    return texts


def sanitize_rules():
    import configparser

    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / "tests" / "nbval_sanitize.cfg", encoding="utf-8")
    return {section: re.compile(config[section]["regex"]) for section in config.sections()}


@pytest.mark.parametrize("rule", sorted(sanitize_rules()))
def test_each_nbval_sanitize_rule_matches_a_committed_output_and_only_whole_words(rule):
    """A rule that matches nothing hides nothing; one that matches inside a word (k8s, p50) hides a real change."""
    regex = sanitize_rules()[rule]
    matches = [(text, match) for text in committed_output_texts() for match in regex.finditer(text)]
    assert matches, f"[{rule}] matches no output of the committed notebooks"
    inside_words = [text[max(0, m.start() - 10):m.end()] for text, m in matches
                    if m.start() > 0 and text[m.start() - 1].isalnum()]
    assert inside_words == [], f"[{rule}] matches inside words"
