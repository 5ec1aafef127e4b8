"""`python -m labtools notebooks`: run the lab's notebooks headlessly with papermill, in order.

    python -m labtools notebooks --catalog auto                    # make lab: into build/executed/
    python -m labtools notebooks --catalog offline --in-place      # make notebooks
    python -m labtools notebooks --catalog offline --prepare-only --output-dir build/nbval  # make test

--in-place writes the executed outputs back into notebooks/ (without papermill's
injected-parameters cell and run metadata), so committed notebooks keep their
own parameters cell. --prepare-only injects parameters without executing, for
nbval to execute and compare against the committed outputs.
"""

import argparse

import nbformat
import papermill

from labtools.kernel import KERNEL_NAME
from utils.catalog import CATALOG_CHOICES, catalog_models, prepare_model, resolve_catalog
from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT, project_path

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def notebook_paths(only=None):
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if not only or any(p.name.startswith(prefix) for prefix in only)]


def parameters_for(path, catalog):
    """Only the parameters a notebook declares (papermill warns about others)."""
    declared = papermill.inspect_notebook(str(path))
    return {"catalog": catalog} if "catalog" in declared else {}


def strip_run_metadata(executed_path, target_path):
    """Copy an executed notebook to `target_path` without papermill's additions."""
    notebook = nbformat.read(executed_path, as_version=4)
    notebook.cells = [c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("papermill", None)
    nbformat.write(notebook, target_path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools notebooks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="auto", choices=CATALOG_CHOICES)
    parser.add_argument("--output-dir", default="build/executed", help="relative to the project root")
    parser.add_argument("--in-place", action="store_true", help="write outputs back into notebooks/")
    parser.add_argument("--prepare-only", action="store_true", help="inject parameters, do not execute")
    parser.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 02")
    args = parser.parse_args(argv)
    output_dir = project_path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        catalog = resolve_catalog(args.catalog)
        if not args.prepare_only:
            for model in catalog_models(catalog):
                print(f"{model.title}: SavedModel at {prepare_model(model)}")
    except LabError as error:
        parser.exit(2, f"error: {error}\n")
    for path in notebook_paths(args.only):
        output = output_dir / path.name
        print(f"{'preparing' if args.prepare_only else 'running'} {path.name} (catalog {catalog!r})", flush=True)
        papermill.execute_notebook(
            str(path), str(output), parameters=parameters_for(path, catalog), kernel_name=KERNEL_NAME,
            prepare_only=args.prepare_only, cwd=str(path.parent), progress_bar=False)
        if args.in_place:
            strip_run_metadata(output, path)
    where = NOTEBOOKS_DIR if args.in_place else output_dir
    print(f"Done: notebooks with outputs are in {where.relative_to(PROJECT_ROOT)}/ "
          f"and exported models in {(BUILD_DIR / 'models').relative_to(PROJECT_ROOT)}/.")
