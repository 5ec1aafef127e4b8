"""`python -m labtools components`: install the real programs the lab runs (`make setup` does).

    python -m labtools components install prometheus haproxy chromium   # what is missing, as this machine allows
    python -m labtools components check prometheus chromium     # exit 1, one sentence each, if missing

Each program is taken from, in order: its environment variable (LAB_PROMETHEUS, ...), PATH, or what an
earlier rootless install unpacked into .venv/opt/. A missing one is installed:
- as root where apt exists: `apt-get install` of Debian's packages;
- without root where apt exists: `apt-get download` and `dpkg-deb -x` into .venv/opt/ (no sudo);
- on macOS: `brew install`;
- anywhere else: one sentence saying what to install and which variable names the binary.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from utils.runtime.processes import CHROMEDRIVER, CHROMIUM, HAPROXY, PROMETHEUS, UNPACKED_PREFIX


@dataclass(frozen=True)
class Component:
    title: str
    programs: tuple  # utils.runtime.processes.Program
    debian: tuple  # Debian packages, installed together
    brew: tuple  # `brew install` arguments


COMPONENTS = {
    "prometheus": Component("Prometheus", (PROMETHEUS,), ("prometheus",), ("prometheus",)),
    # The libraries are the ones a slim Debian lacks: listed so that a rootless unpack has them too.
    "haproxy": Component("haproxy", (HAPROXY,), ("haproxy", "liblua5.3-0", "libopentracing1",
                                                 "libopentracing-c-wrapper0"), ("haproxy",)),
    "chromium": Component("Chromium and its driver", (CHROMIUM, CHROMEDRIVER), ("chromium", "chromium-driver"),
                          ("--cask", "chromium", "chromedriver")),
}


def missing_programs(component):
    return [p for p in component.programs if p.find() is None]


def run(command):
    """Run an installer command quietly; its output is shown only when it fails."""
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if result.returncode != 0:
        sys.stdout.write(result.stdout[-2000:] + result.stderr[-2000:])
    return result.returncode == 0


def apt_install(packages):
    return run(["apt-get", "update", "-qq"]) and run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])


def unpack_debian_packages(packages, prefix=UNPACKED_PREFIX):
    """Download Debian's packages and unpack them under `prefix`, without root."""
    with tempfile.TemporaryDirectory() as download_dir:
        result = subprocess.run(["apt-get", "download", *packages], cwd=download_dir, capture_output=True,
                                text=True)
        if result.returncode != 0:
            sys.stdout.write(result.stderr[-2000:])
            return False
        Path(prefix).mkdir(parents=True, exist_ok=True)
        return all(run(["dpkg-deb", "-x", str(deb), str(prefix)]) for deb in sorted(Path(download_dir).glob("*.deb")))


def install_hint(component):
    variables = " and ".join(p.env_var for p in component.programs)
    return (f"{component.title} is missing: install it (Debian or Ubuntu: `apt-get install "
            f"{' '.join(component.debian)}`; macOS: `brew install {' '.join(component.brew)}`), or set "
            f"{variables} to its binary.")


def install(component):
    """Install what is missing of `component`; returns a one-line outcome and whether it is there."""
    if not missing_programs(component):
        return f"{component.title}: found.", True
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        how, done = "installed Debian's packages", apt_install(component.debian)
    elif shutil.which("apt-get") and shutil.which("dpkg-deb"):
        how, done = f"unpacked Debian's packages into {UNPACKED_PREFIX}", unpack_debian_packages(component.debian)
    elif platform.system() == "Darwin" and shutil.which("brew"):
        how, done = "installed with brew", run(["brew", "install", *component.brew])
    else:
        return install_hint(component), False
    if done and not missing_programs(component):
        return f"{component.title}: {how}.", True
    return install_hint(component), False


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools components", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("install", "check"))
    parser.add_argument("names", nargs="+", choices=sorted(COMPONENTS))
    args = parser.parse_args(argv)
    ok = True
    for name in args.names:
        component = COMPONENTS[name]
        if args.action == "check":
            line, present = (f"{component.title}: found.", True) if not missing_programs(component) else (
                install_hint(component), False)
        else:
            line, present = install(component)
        if not present or args.action == "install":
            print(line, flush=True)
        ok = ok and present
    return 0 if ok else 1
