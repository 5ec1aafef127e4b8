"""`python -m labtools notebooks`: run the lab's notebooks headlessly with papermill, in order.

    python -m labtools notebooks --catalog auto      # make lab: into build/executed/, then the report
    python -m labtools notebooks --catalog offline --in-place   # make notebooks: refresh committed outputs

`--catalog` decides what the notebooks' `catalog = "auto"` resolves to: it is resolved once, here, and
passed to every kernel as LAB_CATALOG, so all notebooks of a run agree. `--backend` (docker, binary or
local) is passed the same way as LAB_BACKEND, which the notebooks' `backend = "auto"` then takes
(`make notebooks` and `make test` pin `local`); left at `auto`, each notebook probes. The output is one line per
notebook; TensorFlow's, CUDA's and Jupyter's logs go to build/logs/<notebook>.log. A failing notebook
is reported with its failing cell and error, the run stops there, and the exit code is 1.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import papermill
from papermill.exceptions import PapermillExecutionError

from labtools.kernel import KERNEL_NAME
from labtools.report import RUN_SUMMARY, write_report
from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT, project_path
from utils.runtime.model_server_process import BACKEND_ENV_VAR
from utils.runtime.processes import stderr_to

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
LOGS_DIR = BUILD_DIR / "logs"


@dataclass
class NotebookRun:
    """How one notebook's run went."""

    name: str
    seconds: float
    ok: bool
    error: str = ""
    log: str = ""


def shown(path):
    """A path as the user reads it: relative to the project root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def notebook_paths(notebooks_dir=NOTEBOOKS_DIR, only=None, upto=None):
    """The numbered notebooks in order; `only` keeps those with the given prefixes, `upto` those up to one."""
    paths = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if (not only or any(p.name.startswith(prefix) for prefix in only))
            and (upto is None or p.name[:2] <= upto.zfill(2))]


def strip_run_metadata(executed_path, target_path):
    """Copy an executed notebook to `target_path` without papermill's run metadata."""
    notebook = nbformat.read(executed_path, as_version=4)
    for cell in notebook.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("papermill", None)
    nbformat.write(notebook, target_path)


def describe_failure(error):
    """The failing cell's first lines and its error, for the terminal."""
    if isinstance(error, PapermillExecutionError):
        source = "\n".join(f"    {line}" for line in error.source.splitlines()[:3])
        return f"cell {error.exec_count}:\n{source}\n  {error.ename}: {error.evalue}"
    return f"{type(error).__name__}: {error}"


def run_notebook(path, output, log_path):
    """Execute one notebook on the lab's kernel; returns a NotebookRun."""
    started = time.perf_counter()
    try:
        with stderr_to(log_path):
            papermill.execute_notebook(str(path), str(output), kernel_name=KERNEL_NAME, cwd=str(path.parent),
                                       progress_bar=False, log_output=False)
    except (PapermillExecutionError, RuntimeError) as error:
        return NotebookRun(path.name, time.perf_counter() - started, False, describe_failure(error),
                           shown(log_path))
    return NotebookRun(path.name, time.perf_counter() - started, True, log=shown(log_path))


def prepare_catalog(choice):
    """Resolve the catalog once and prepare its models; every kernel of this run then uses it.

    TensorFlow logs as soon as it is imported, so utils.catalog is imported only once stderr goes to
    build/logs/models.log.
    """
    with stderr_to(LOGS_DIR / "models.log"):
        from utils.catalog import CATALOG_ENV_VAR, catalog_models, prepare_model, resolve_catalog

        catalog = resolve_catalog(choice)
        for model in catalog_models(catalog):
            prepare_model(model)
    os.environ[CATALOG_ENV_VAR] = catalog
    return catalog


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="auto", choices=("auto", "tfhub", "offline"),
                        help="what the notebooks' catalog 'auto' resolves to (auto: probe TF Hub once)")
    parser.add_argument("--backend", default="auto", choices=("auto", "docker", "binary", "local"),
                        help="what the notebooks' backend 'auto' resolves to (auto: each notebook probes)")
    parser.add_argument("--output-dir", default="build/executed", help="relative to the project root")
    parser.add_argument("--in-place", action="store_true", help="write outputs back into the notebooks")
    parser.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 02")
    parser.add_argument("--upto", help="run the notebooks up to this number, e.g. 04 (a learner catching up)")
    parser.add_argument("--report-dir", default="build/report", help="relative to the project root")
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    output_dir = project_path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    if args.backend != "auto":
        os.environ[BACKEND_ENV_VAR] = args.backend
    started = time.perf_counter()
    try:
        catalog = prepare_catalog(args.catalog)
    except LabError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Models of catalog '{catalog}' are ready. Logs: {shown(LOGS_DIR)}/", flush=True)
    runs = []
    for path in notebook_paths(args.notebooks_dir, args.only, args.upto):
        output = output_dir / path.name
        run = run_notebook(path, output, LOGS_DIR / f"{path.stem}.log")
        runs.append(run)
        print(f"  {run.name:32} {run.seconds:6.1f} s  {'ok' if run.ok else 'FAILED'}", flush=True)
        if not run.ok:
            print(f"{run.name} failed at {run.error}\n  log: {run.log}", flush=True)
            break
        if args.in_place:
            strip_run_metadata(output, path)
    total = time.perf_counter() - started
    failed = [run for run in runs if not run.ok]
    summary = {"catalog": catalog, "seconds": round(total, 1), "runs": [asdict(run) for run in runs]}
    if not args.in_place:
        (output_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=1))
        report = write_report(output_dir, project_path(args.report_dir))
        print(f"Report: {shown(report)}")
    where = Path(args.notebooks_dir) if args.in_place else output_dir
    print(f"{len(runs) - len(failed)} of {len(runs)} notebooks ran in {total:.0f} s "
          f"({'failed' if failed else 'ok'}); executed notebooks are in {shown(where)}/.")
    return 1 if failed else 0
