"""`python -m labtools learner` (`make learner`): learner copies of the notebooks, in build/learner/.

The notebooks are the one source: each ends with its exercises and a "Solutions" section whose code cells
are tagged `solution` (collapsed in JupyterLab, executed by `make test`). A learner copy replaces each
solution cell by a short stub, keeps the cells tagged `solution-check` (an `assert` on what the learner
should find), and has no outputs. Never edit a learner copy: make it again.
"""

import argparse
from pathlib import Path

import nbformat

from utils.paths import BUILD_DIR, PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
LEARNER_DIR = BUILD_DIR / "learner"
SOLUTION_TAG = "solution"
STUB = "# Your solution here: see the exercise above.\n"


def learner_copy(notebook):
    """The learner's version of a notebook node: solutions stubbed, outputs cleared."""
    copy = nbformat.from_dict(notebook)
    for cell in copy.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.source = STUB
            cell.metadata = {"tags": ["exercise"]}
    nbformat.validate(copy)
    return copy


def write_learner_copies(notebooks_dir=NOTEBOOKS_DIR, learner_dir=LEARNER_DIR):
    """Write a learner copy of every numbered notebook; returns their paths."""
    learner_dir = Path(learner_dir)
    learner_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")):
        target = learner_dir / path.name
        staging = target.with_suffix(".tmp")
        nbformat.write(learner_copy(nbformat.read(path, as_version=4)), staging)
        staging.replace(target)
        written.append(target)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools learner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    written = write_learner_copies()
    stubs = sum(c.source == STUB for p in written for c in nbformat.read(p, as_version=4).cells)
    print(f"Wrote {len(written)} learner copies with {stubs} solutions stubbed to "
          f"{LEARNER_DIR.relative_to(PROJECT_ROOT)}/.")
    return 0
