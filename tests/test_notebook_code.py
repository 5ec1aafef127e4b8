"""The notebooks' lesson code and utils' copies of it must not drift apart; house style."""

import inspect
import re

import nbformat
import pytest

from conftest import PROJECT_ROOT
from utils import serving

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_cell_defining(notebook_name, definition):
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / notebook_name, as_version=4)
    cells = [c.source for c in notebook.cells if c.cell_type == "code" and c.source.startswith(definition)]
    assert len(cells) == 1, f"{notebook_name} should define {definition!r} in exactly one cell"
    return cells[0]


@pytest.mark.parametrize("notebook_name, obj", [
    ("02_serving_signatures.ipynb", serving.ServingModule),
    ("03_export_savedmodel.ipynb", serving.export_servable),
])
def test_utils_copy_equals_the_notebook_cell(notebook_name, obj):
    definition = f"{'class' if inspect.isclass(obj) else 'def'} {obj.__name__}"
    assert code_cell_defining(notebook_name, definition).strip() == inspect.getsource(obj).strip()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_house_template(path):
    notebook = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert len(re.findall(r"^# ", markdown, flags=re.M)) == 1, "one H1"
    objectives = re.findall(r"^(\d+)\. ", markdown.split("## Setup")[0], flags=re.M)
    sections = re.findall(r"^## (\d+)\. ", markdown, flags=re.M)
    assert objectives and objectives == sections, "numbered objectives match numbered sections"
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "one parameters cell"
    for line in parameters[0].source.splitlines():
        assert re.match(r"^\w+ = .+  # .+", line), f"parameter without a comment: {line!r}"
    assert "## Summary" in markdown and "**Next:**" in markdown or "Next:" in markdown
    assert notebook.metadata.kernelspec.name == "tfserving-lab"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.get("name") == "stderr"], f"stderr in {cell.source[:40]!r}"
            assert not [o for o in cell.outputs if o.output_type == "error"]
