"""`python -m labtools kernel`: install the lab's Jupyter kernel into the active virtual environment.

TensorFlow's C++ runtime logs to the process's stderr. By default ipykernel
captures that file descriptor into cell outputs, which makes notebook outputs
noisy and unstable (nbval would fail on them). This kernel leaves fd 2 to the
terminal and quietens TF's C++ logs.
"""

import argparse
import json
import sys
from pathlib import Path

from ipykernel.kernelspec import install

KERNEL_NAME = "tfserving-lab"


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools kernel", description=__doc__).parse_args(argv)
    path = Path(install(kernel_name=KERNEL_NAME, display_name="TF Serving lab (.venv)", prefix=sys.prefix))
    spec_path = path / "kernel.json"
    spec = json.loads(spec_path.read_text())
    spec["argv"] = [sys.executable, *spec["argv"][1:], "--IPKernelApp.capture_fd_output=False"]
    spec["env"] = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    spec_path.write_text(json.dumps(spec, indent=1))
    print(f"installed kernel {KERNEL_NAME!r} at {path}")
