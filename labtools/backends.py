"""`python -m labtools backends` (`make test-backends`): notebooks 04 and 05 on TF Serving's two other
backends, each chosen by the notebooks' own `backend = "auto"`. Not part of `make test`.

1. binary: the shim tests/fakes/bin/tensorflow_model_server first on PATH and no Docker engine visible
   (DOCKER_HOST names a socket nothing listens on), so `auto` picks 'binary'.
2. Docker: Debian's docker.io installed if there is no `dockerd` (as root, with apt), and an engine
   started (`dockerd --storage-driver=vfs`) if none answers; the one started here is stopped at the end.
3. The stand-in image lab/tfserving-standin:<tag>, built once with `docker import`: a rootfs holding only
   TF Serving's entrypoint, which runs the lab's model_server from read-only bind mounts (/usr, Python's
   prefix, the repository) that LAB_DOCKER_RUN_OPTIONS adds.
4. docker: the engine answering and LAB_TFSERVING_IMAGE naming the stand-in, so `auto` picks 'docker':
   real published ports, real mounts, the container paths of models.config; then a container's
   `docker logs`, and no lab container left.

Executed notebooks go to build/backends/<backend>/; one line per step, then a verdict; exit 1 on failure.
"""

import argparse
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nbformat

from labtools.components import apt_install
from labtools.notebooks import LOGS_DIR, NOTEBOOKS_DIR, notebook_paths, prepare_catalog, run_notebook, shown
from utils.deploy import exported_versions
from utils.errors import LabError
from utils.paths import BUILD_DIR, PROJECT_ROOT
from utils.runtime.model_server_process import (
    BACKEND_ENV_VAR,
    DEFAULT_GRPC_PORT,
    DEFAULT_REST_PORT,
    IMAGE_ENV_VAR,
    RUN_OPTIONS_ENV_VAR,
    DockerServer,
    TFServingBinary,
    docker,
    docker_engine_answers,
    wait_until_available,
)
from utils.runtime.processes import ManagedProcess, free_port, lab_processes
from utils.runtime.waiting import wait_until

OUTPUT_DIR = BUILD_DIR / "backends"
SHIM_DIR = PROJECT_ROOT / "tests" / "fakes" / "bin"
STANDIN_IMAGE = "lab/tfserving-standin"
NOTEBOOKS = ("04", "05")
# TF Serving's image: ENV MODEL_BASE_PATH=/models MODEL_NAME=model, and this entrypoint but for the
# program it runs (tensorflow_model_server there) and --bind_address (TF Serving listens on all addresses).
ENTRYPOINT = """#!/bin/sh
exec {python} -m model_server --bind_address=0.0.0.0 --port=8500 --rest_api_port=8501 \\
    --model_name=${{MODEL_NAME}} --model_base_path=${{MODEL_BASE_PATH}}/${{MODEL_NAME}} "$@"
"""


class StepFailed(Exception):
    """A step that did not do what it should: one sentence."""


def step(title, action):
    """Run one step, print one line (seconds, ok or FAILED and why); returns whether it passed."""
    started = time.perf_counter()
    try:
        outcome = action()
    except (StepFailed, LabError, OSError, subprocess.SubprocessError) as error:
        print(f"  {title:58} {time.perf_counter() - started:6.1f} s  FAILED: {error}", flush=True)
        return False
    print(f"  {title:58} {time.perf_counter() - started:6.1f} s  ok{f' ({outcome})' if outcome else ''}",
          flush=True)
    return True


def ensure_exported_models():
    """build/models/ as notebook 03 leaves it: notebooks 01-03 run (offline catalog) if it is missing."""
    if (BUILD_DIR / "models").is_dir() and any((BUILD_DIR / "models").glob("*/*/saved_model.pb")):
        return "build/models/ is there"
    prepare_catalog("offline")
    (OUTPUT_DIR / "catch-up").mkdir(parents=True, exist_ok=True)
    for path in notebook_paths(upto="03"):
        run = run_notebook(path, OUTPUT_DIR / "catch-up" / path.name, LOGS_DIR / f"backends-{path.stem}.log")
        if not run.ok:
            raise StepFailed(f"{run.name} failed at {run.error} (log: {run.log})")
    return "ran notebooks 01-03"


def run_notebooks(backend, environment):
    """Run notebooks 04 and 05 with `environment` added; each must say that `auto` chose `backend`."""
    for path in notebook_paths(NOTEBOOKS_DIR, only=NOTEBOOKS):
        output = OUTPUT_DIR / backend / path.name
        output.parent.mkdir(parents=True, exist_ok=True)
        run = with_environment(environment, lambda: run_notebook(
            path, output, LOGS_DIR / f"backends-{backend}-{path.stem}.log"))
        if not run.ok:
            raise StepFailed(f"{run.name} failed at {run.error} (log: {run.log})")
        if f"using '{backend}'" not in printed_text(output):
            raise StepFailed(f"{run.name}'s backend 'auto' did not choose '{backend}': see {shown(output)}")
    return f"auto chose '{backend}'; executed in {shown(OUTPUT_DIR / backend)}/"


def printed_text(notebook_path):
    """Everything an executed notebook's cells printed."""
    notebook = nbformat.read(notebook_path, as_version=4)
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))


def binary_environment():
    """The shim first on PATH, the shim's python, and a Docker client that finds no engine."""
    return {"PATH": f"{SHIM_DIR}:{os.environ['PATH']}", "LAB_STANDIN_PYTHON": sys.executable,
            "DOCKER_HOST": f"unix://{BUILD_DIR / 'backends' / 'no-engine.sock'}"}


def install_docker():
    if shutil.which("dockerd"):
        return f"dockerd is {shutil.which('dockerd')}"
    if not (shutil.which("apt-get") and os.geteuid() == 0):
        raise StepFailed("dockerd is missing: install Docker Engine (Debian or Ubuntu, as root: "
                         "`apt-get install docker.io`), then run `make test-backends` again.")
    if not apt_install(["docker.io"]) or not shutil.which("dockerd"):
        raise StepFailed("`apt-get install docker.io` did not install dockerd: see its output above.")
    return "installed Debian's docker.io"


class DockerEngine:
    """An engine that answers: the one running, else `dockerd` started here (and stopped by `stop`)."""

    def __init__(self):
        self.started = None

    def start(self):
        if docker_engine_answers():
            return "an engine answers already"
        self.started = ManagedProcess(["dockerd", "--storage-driver=vfs"], "Docker engine",
                                      log_path=LOGS_DIR / "dockerd.log").start()
        wait_until(self.answering_unless_exited, 90, "the Docker engine answering `docker info`")
        return f"started dockerd (pid {self.started.pid}, log {shown(LOGS_DIR / 'dockerd.log')})"

    def answering_unless_exited(self):
        if docker_engine_answers():
            return True
        if self.started.exited() is not None:
            raise StepFailed(f"dockerd exited with code {self.started.exited()}: see {shown(LOGS_DIR / 'dockerd.log')}")
        return False

    def stop(self):
        if self.started is None:
            return "none was started here"
        return f"stopped dockerd (exit code {self.started.stop()})"


def bind_mounts():
    """What the stand-in's entrypoint needs from this machine: /usr, Python's prefixes, the repository."""
    wanted = sorted({Path("/usr"), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), PROJECT_ROOT})
    kept = [path for path in wanted if not any(path != other and path.is_relative_to(other) for other in wanted)]
    return [option for path in kept for option in ("-v", f"{path}:{path}:ro")]


def standin_rootfs(entrypoint):
    """A tar of the stand-in image's root: usr-merged links, empty directories and the entrypoint."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as rootfs:
        for link in ("bin", "lib", "lib64", "sbin"):
            member = tarfile.TarInfo(link)
            member.type, member.linkname = tarfile.SYMTYPE, f"usr/{link}"
            rootfs.addfile(member)
        for directory in ("models", "configs", "tmp", "proc", "sys", "dev", "etc", "usr"):
            member = tarfile.TarInfo(directory)
            member.type, member.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            rootfs.addfile(member)
        script = entrypoint.encode()
        member = tarfile.TarInfo("tf_serving_entrypoint.sh")
        member.size, member.mode = len(script), 0o755
        rootfs.addfile(member, io.BytesIO(script))
    return buffer.getvalue()


def build_standin_image():
    """The stand-in image, built once per entrypoint (its tag is the entrypoint's hash); returns its name."""
    entrypoint = ENTRYPOINT.format(python=shlex.quote(sys.executable))
    image = f"{STANDIN_IMAGE}:{hashlib.sha256(entrypoint.encode()).hexdigest()[:12]}"
    if docker("image", "inspect", image).returncode == 0:
        return image, "built before"
    with tempfile.TemporaryDirectory() as scratch:
        tar = Path(scratch) / "rootfs.tar"
        tar.write_bytes(standin_rootfs(entrypoint))
        result = docker("import", "--change", 'ENTRYPOINT ["/tf_serving_entrypoint.sh"]',
                        "--change", "ENV MODEL_BASE_PATH=/models", "--change", "ENV MODEL_NAME=model",
                        str(tar), image)
    if result.returncode != 0:
        raise StepFailed(f"`docker import` failed: {result.stderr.strip()}")
    return image, "built"


def docker_logs_and_clean_up():
    """A container on free ports: ready, its `docker logs` the server's log, then removed."""
    config = BUILD_DIR / "configs" / "models.local.config"
    (model_name, versions), = exported_versions(BUILD_DIR / "models").items()
    rest_port = free_port()
    with DockerServer(config, grpc_port=free_port(), rest_port=rest_port) as server:
        wait_until_available(f"http://127.0.0.1:{rest_port}", model_name, versions, timeout=180)
        log = server.log()
    if model_name not in log:
        raise StepFailed(f"`docker logs {server.name}` does not mention {model_name}: {log[-300:]!r}")
    return f"`docker logs` has {len(log.splitlines())} lines"


def nothing_left_running():
    containers = docker("ps", "-a", "--filter", "name=lab-tfserving", "--format", "{{.Names}}").stdout.split()
    if containers:
        raise StepFailed(f"lab containers remain: {', '.join(containers)}")
    notebook_ports = {DEFAULT_GRPC_PORT, DEFAULT_REST_PORT}  # other lab servers (tests) may run meanwhile
    servers = [record.describe() for record in lab_processes()
               if record.kind == TFServingBinary.kind or notebook_ports & set(record.ports.values())]
    if servers:
        raise StepFailed(f"lab servers remain: {', '.join(servers)}")
    return "no lab container or server"


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools backends", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    started = time.perf_counter()
    engine, image = DockerEngine(), {}

    def docker_environment():
        return {IMAGE_ENV_VAR: image["name"], RUN_OPTIONS_ENV_VAR: shlex.join(bind_mounts())}

    def build():
        image["name"], how = build_standin_image()
        return f"{image['name']}, {how}"

    steps = [
        ("models exported by notebook 03", ensure_exported_models),
        ("binary: notebooks 04, 05 with the shim on PATH", lambda: run_notebooks("binary", binary_environment())),
        ("binary: nothing left running", nothing_left_running),
        ("docker: dockerd installed", install_docker),
        ("docker: an engine answers", engine.start),
        ("docker: stand-in image", build),
        ("docker: notebooks 04, 05 on the stand-in image", lambda: run_notebooks("docker", docker_environment())),
        ("docker: docker logs, then the container removed", lambda: with_environment(docker_environment(),
                                                                                     docker_logs_and_clean_up)),
        ("docker: nothing left running", nothing_left_running),
    ]
    print(f"Notebooks {' and '.join(NOTEBOOKS)} on each backend `auto` can choose; logs in {shown(LOGS_DIR)}/",
          flush=True)
    passed = True
    try:
        for title, action in steps:
            passed = step(title, action)
            if not passed:
                break
    finally:
        passed = step("docker: the engine started here stopped", engine.stop) and passed
    verdict = "every backend passed" if passed else "FAILED"
    print(f"Backends: {verdict} in {time.perf_counter() - started:.0f} s.")
    return 0 if passed else 1


def with_environment(environment, action):
    """Call `action()` with `environment` added to os.environ (and LAB_BACKEND unset) meanwhile."""
    saved = dict(os.environ)
    os.environ.update(environment)
    os.environ.pop(BACKEND_ENV_VAR, None)
    try:
        return action()
    finally:
        os.environ.clear()
        os.environ.update(saved)
