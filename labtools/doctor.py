"""`python -m labtools doctor` (`make doctor`): will the lab run on this laptop? One table of checks.

Each check says ok, warn (the lab runs, with a caveat) or FAIL (the lab will not run as taught), and a
failing or warning line gives the command that fixes it. The exit code is 0 only when nothing FAILs.
Run it the day before a workshop, on every laptop.
"""

import argparse
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata

import psutil
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from labtools.kernel import KERNEL_NAME
from utils import catalog
from utils.paths import BUILD_DIR, PROJECT_ROOT
from utils.runtime.model_server_process import TFSERVING_BINARY, docker_engine_answers, tfserving_image
from utils.runtime.processes import PROMETHEUS, lab_processes, port_holder

MIN_MEMORY_GIB = 4
MIN_DISK_GIB = 5
LAB_PORTS = {8500: "grpc_port", 8501: "rest_port", 9090: "prometheus_port"}
BUNDLE_MANIFEST = BUILD_DIR / "bundle" / "SHA256SUMS"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""


def check_python():
    version = ".".join(map(str, sys.version_info[:3]))
    if (3, 10) <= sys.version_info[:2] <= (3, 13):
        return Check("Python", "ok", version)
    return Check("Python", "FAIL", f"{version}; the lab needs 3.10 to 3.13",
                 "install Python 3.11 and run `make setup PYTHON=python3.11`")


def check_architecture():
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return Check("CPU", "warn", f"{machine}: the tensorflow/serving image has no native arm64 build "
                     "(tensorflow/serving#1816), so the lab uses its local server", "nothing to do")
    return Check("CPU", "ok", f"{machine}, {os.cpu_count()} cores")


def check_memory():
    available = psutil.virtual_memory().available / 2**30
    if available >= MIN_MEMORY_GIB:
        return Check("memory", "ok", f"{available:.1f} GiB available")
    return Check("memory", "FAIL", f"{available:.1f} GiB available, the lab needs {MIN_MEMORY_GIB} GiB",
                 "close other programs")


def check_disk():
    free = shutil.disk_usage(PROJECT_ROOT).free / 2**30
    if free >= MIN_DISK_GIB:
        return Check("disk", "ok", f"{free:.1f} GiB free")
    return Check("disk", "FAIL", f"{free:.1f} GiB free, the lab needs {MIN_DISK_GIB} GiB", "free some disk space")


def check_venv():
    """The venv runs this command; every pin of requirements.txt must be installed at its version."""
    wrong = []
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        name, _, pinned = line.split("#")[0].strip().partition("==")
        if not pinned:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            wrong.append(f"{name} {installed} (wants {pinned})")
    if wrong:
        return Check("venv", "FAIL", "; ".join(wrong[:3]), "make setup")
    return Check("venv", "ok", sys.prefix)


def check_kernel():
    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        return Check("Jupyter kernel", "FAIL", f"{KERNEL_NAME!r} is not installed", "make setup")
    return Check("Jupyter kernel", "ok", KERNEL_NAME)


def check_tfserving():
    """Which server notebooks 04-07 run with `backend = "auto"`: TF Serving itself, or the stand-in."""
    binary = TFSERVING_BINARY.find()
    if docker_engine_answers():
        replicas = f"the binary {binary}" if binary else "the lab's stand-in"
        return Check("TF Serving", "ok", f"a Docker engine answers: notebooks 04-06 run {tfserving_image()}, "
                     f"07's replicas {replicas}")
    if binary is not None:
        return Check("TF Serving", "ok", f"no Docker engine; notebooks 04-07 run the binary {binary}")
    return Check("TF Serving", "warn", "no Docker engine, no tensorflow_model_server: notebooks 04-07 run the "
                 "lab's stand-in", "nothing to do (README: Backends, to run TF Serving itself)")


def check_port(port, name):
    holder = port_holder(port)
    if holder is None:
        return Check(f"port {port}", "ok", "free")
    pid, command = holder
    if pid in {record.pid for record in lab_processes()}:
        return Check(f"port {port}", "warn", f"held by an earlier lab server (pid {pid})", "make stop")
    who = f"{command} (pid {pid})" if pid is not None else command
    return Check(f"port {port}", "FAIL", f"held by {who}",
                 f"stop it, or change `{name}` in the notebooks' parameters cells")


def check_prometheus():
    binary = PROMETHEUS.find()
    if binary:
        return Check("Prometheus", "ok", binary)
    return Check("Prometheus", "FAIL", "not found: notebook 06 would show raw metrics only", "make setup")


def check_tfhub():
    mirror = os.environ.get(catalog.TFHUB_MIRROR_ENV)
    where = f"the mirror {mirror}" if mirror else "TF Hub"
    if catalog.tfhub_reachable():
        return Check("TF Hub", "ok", f"{where} answers")
    return Check("TF Hub", "warn", f"{where} does not answer: catalog 'auto' will use 'offline'",
                 f"warm the cache (`make models CATALOG=tfhub`), or set {catalog.TFHUB_MIRROR_ENV} to a "
                 "workshop mirror (`make mirror` on one laptop)")


def check_cache(name):
    cold = [model.title for model in catalog.CATALOGS[name] if not catalog.is_prepared(model)]
    if not cold:
        return Check(f"{name} models", "ok", "in the cache")
    return Check(f"{name} models", "warn", f"not in the cache: {', '.join(cold)} (the first run "
                 f"{'downloads them' if name == 'tfhub' else 'converts them'})", f"make models CATALOG={name}")


def check_bundle():
    if BUNDLE_MANIFEST.exists():
        return Check("bundle", "ok", str(BUNDLE_MANIFEST.parent.relative_to(PROJECT_ROOT)))
    return Check("bundle", "warn", "no offline bundle", "make bundle (for laptops without network)")


def all_checks():
    return [check_python(), check_architecture(), check_memory(), check_disk(), check_venv(), check_kernel(),
            check_tfserving(), *(check_port(port, name) for port, name in LAB_PORTS.items()), check_prometheus(),
            check_tfhub(), *(check_cache(name) for name in catalog.CATALOGS), check_bundle()]


def table(checks):
    """The checks as a plain-text table, one line each."""
    widths = [max(len(getattr(c, field)) for c in checks) for field in ("name", "status")]
    widths[1] = max(widths[1], len("status"))
    lines = [f"{'check':{widths[0]}}  {'status':{widths[1]}}  detail  -> fix"]
    for c in checks:
        fix = f"  -> {c.fix}" if c.fix and c.status != "ok" else ""
        lines.append(f"{c.name:{widths[0]}}  {c.status:{widths[1]}}  {c.detail}{fix}")
    return "\n".join(lines)


def main(argv=None):
    argparse.ArgumentParser(prog="python -m labtools doctor", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    checks = all_checks()
    print(table(checks))
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"\n{len(failed)} check(s) failed: the lab will not run as taught until they are fixed." if failed
          else "\nThe lab will run on this machine.")
    return 1 if failed else 0
