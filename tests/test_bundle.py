"""The offline bundle: checksums verified before use, wheels installed with the index disabled."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labtools import bundle


@pytest.fixture(scope="session")
def built_toy_bundle(tmp_path_factory):
    """A bundle with one wheel built here (no network), a model cache and its manifest: built once per session."""
    tmp_path = tmp_path_factory.mktemp("toy_bundle")
    package = tmp_path / "src"
    (package / "labtoy").mkdir(parents=True)
    (package / "labtoy" / "__init__.py").write_text("ANSWER = 42\n")
    (package / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                            'build-backend = "setuptools.build_meta"\n'
                                            '[project]\nname = "labtoy"\nversion = "1.0"\n')
    root = tmp_path / "bundle"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(root / "wheels"), str(package)], check=True)
    (root / "cache" / "offline" / "model").mkdir(parents=True)
    (root / "cache" / "offline" / "model" / "saved_model.pb").write_bytes(b"\x08\x01")
    bundle.write_manifest(root)
    return root


@pytest.fixture
def toy_bundle(built_toy_bundle, tmp_path):
    """A fresh copy of the toy bundle for each test, which may tamper with it."""
    return Path(shutil.copytree(built_toy_bundle, tmp_path / "bundle"))


def test_a_complete_bundle_verifies(toy_bundle):
    assert bundle.verify(toy_bundle) == 2


def test_a_tampered_file_is_one_sentence_and_installs_nothing(toy_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    (toy_bundle / "cache" / "offline" / "model" / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(SystemExit) as exit_:
        bundle.main(["install", str(toy_bundle)])
    assert exit_.value.code == 1
    assert not (tmp_path / "cache").exists(), "nothing copied from a bundle that failed its check"


def test_the_failure_names_the_file(toy_bundle):
    (toy_bundle / "cache" / "offline" / "model" / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(bundle.BundleError, match=r"^cache/offline/model/saved_model.pb in .* does not match its "
                                                 r"checksum: copy the bundle again\.$"):
        bundle.verify(toy_bundle)


def test_a_missing_file_is_named(toy_bundle):
    (toy_bundle / "cache" / "offline" / "model" / "saved_model.pb").unlink()
    with pytest.raises(bundle.BundleError, match="is listed in SHA256SUMS but missing"):
        bundle.verify(toy_bundle)


def test_a_directory_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(bundle.BundleError, match=r"is not a bundle: it has no SHA256SUMS"):
        bundle.verify(tmp_path)


def test_install_into_a_fresh_venv_with_the_index_disabled(toy_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # any index use would fail
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("labtoy==1.0\n")
    bundle.verify(toy_bundle)
    bundle.install_wheels(toy_bundle, python, requirements)
    assert bundle.install_models(toy_bundle)
    answer = subprocess.run([python, "-c", "import labtoy; print(labtoy.ANSWER)"], capture_output=True, text=True)
    assert answer.stdout == "42\n"
    assert (tmp_path / "cache" / "offline" / "model" / "saved_model.pb").read_bytes() == b"\x08\x01"


def test_the_bundle_carries_every_debian_package_the_lab_installs():
    from labtools.components import COMPONENTS

    wanted = {package for component in COMPONENTS.values() for package in component.debian}
    assert wanted <= set(bundle.DEBIAN_PACKAGES)
