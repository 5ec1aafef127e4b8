"""`python -m labtools bundle` (`make bundle`, `make setup BUNDLE=<dir>`): the lab for a room with no network.

    python -m labtools bundle write                # build/bundle/: wheels, model caches, Debian packages
    python -m labtools bundle verify <dir>         # every file against SHA256SUMS
    python -m labtools bundle install <dir> --python .venv/bin/python   # wheels, models, packages

A bundle holds the wheels of requirements.txt for this platform and Python (`wheels/`), the model cache
of every prepared catalog (`cache/`), Debian's packages of the programs the lab runs (`debs/`), and a
`SHA256SUMS` manifest. `make setup BUNDLE=<dir>` verifies it, installs the wheels with
`pip --no-index --find-links`, copies the models into the cache and installs the packages: no network.

This module uses only the standard library: `verify` runs before the lab's venv exists.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from utils.paths import BUILD_DIR, PROJECT_ROOT, cache_dir

BUNDLE_DIR = BUILD_DIR / "bundle"
MANIFEST = "SHA256SUMS"
# Those of labtools.components (kept in step by a test; this module is stdlib-only), and chromium-common,
# which the chromium package needs beside it when unpacked without root.
DEBIAN_PACKAGES = ("prometheus", "haproxy", "liblua5.3-0", "libopentracing1", "libopentracing-c-wrapper0", "chromium",
                   "chromium-common", "chromium-driver")


class BundleError(Exception):
    """A bundle that cannot be used, in one sentence."""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(bundle):
    """SHA256SUMS in `sha256sum` format, for every file of the bundle."""
    bundle = Path(bundle)
    lines = [f"{sha256(p)}  {p.relative_to(bundle).as_posix()}" for p in sorted(bundle.rglob("*"))
             if p.is_file() and p.name != MANIFEST]
    (bundle / MANIFEST).write_text("\n".join(lines) + "\n")
    return len(lines)


def verify(bundle):
    """Check every file against SHA256SUMS; raises BundleError naming the first that differs."""
    bundle = Path(bundle)
    manifest = bundle / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{bundle} is not a bundle: it has no {MANIFEST} (make one with `make bundle`).")
    listed = 0
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{name} is listed in {MANIFEST} but missing from {bundle}: copy the bundle again.")
        if sha256(path) != digest:
            raise BundleError(f"{name} in {bundle} does not match its checksum: copy the bundle again.")
        listed += 1
    return listed


def write_bundle(bundle=BUNDLE_DIR, requirements=PROJECT_ROOT / "requirements.txt"):
    """Write a bundle for this platform and Python; returns its directory."""
    bundle = Path(bundle)
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "wheels").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--dest", str(bundle / "wheels"), "-r", str(requirements), "pip"], check=True)
    if cache_dir().is_dir():
        shutil.copytree(cache_dir(), bundle / "cache", ignore=shutil.ignore_patterns(".*"))
    if shutil.which("apt-get"):
        (bundle / "debs").mkdir()
        subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=bundle / "debs", check=True,
                       capture_output=True)
    write_manifest(bundle)
    return bundle


def install_wheels(bundle, python, requirements=PROJECT_ROOT / "requirements.txt"):
    """pip-install `requirements` into the environment of `python` from the bundle only."""
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(Path(bundle) / "wheels"), "-r", str(requirements)], check=True)


def install_models(bundle, cache=None):
    """Copy the bundle's model cache into the lab's cache (models already there are kept)."""
    source = Path(bundle) / "cache"
    if source.is_dir():
        shutil.copytree(source, cache or cache_dir(), dirs_exist_ok=True)
    return source.is_dir()


def install_debian_packages(bundle, prefix):
    """Install the bundle's Debian packages: apt as root, else unpacked under `prefix` (no sudo)."""
    debs = sorted((Path(bundle) / "debs").resolve().glob("*.deb"))  # apt takes a .deb by its path
    if not debs:
        return False
    if os.geteuid() == 0 and shutil.which("apt-get"):
        command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *map(str, debs)]
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    else:
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(prefix)], check=True)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labtools bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("write", "verify", "install"))
    parser.add_argument("bundle", nargs="?", default=str(BUNDLE_DIR))
    parser.add_argument("--python", help="install: the venv's python to pip-install the wheels into")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            bundle = write_bundle(args.bundle)
            size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            print(f"Wrote {bundle} ({size / 2**20:,.0f} MiB); copy it to the room's laptops and run "
                  f"`make setup BUNDLE=<its path>` there.")
            return 0
        files = verify(args.bundle)
        if args.action == "verify":
            print(f"{args.bundle}: {files} files match {MANIFEST}.")
            return 0
        if args.python:
            install_wheels(args.bundle, args.python)
        models = install_models(args.bundle)
        debs = install_debian_packages(args.bundle, PROJECT_ROOT / ".venv" / "opt")
        print(f"From {args.bundle}: {files} files verified; wheels {'installed' if args.python else 'skipped'}; "
              f"models {'copied into the cache' if models else 'none'}; Debian packages "
              f"{'installed' if debs else 'none'}.")
    except BundleError as error:
        parser.exit(1, f"error: {error}\n")
    except subprocess.CalledProcessError as error:
        said = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] if error.stderr else []
        parser.exit(1, f"error: `{' '.join(map(str, error.cmd[:4]))} ...` failed with exit code {error.returncode}"
                       f"{': ' + said[0] if said else ''}.\n")
    return 0
