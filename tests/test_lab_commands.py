"""The maintainers' and instructors' commands: the quiet lab runner, its report, the component installer."""

import os
import subprocess
import sys

import nbformat
import pytest

from conftest import PROJECT_ROOT
from labtools import components
from labtools.kernel import KERNEL_NAME
from utils.runtime.processes import Program


def write_notebook(path, *sources):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "lab", "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def failing_lab_run(tmp_path_factory):
    """`labtools notebooks` on two notebooks, the second failing in its second cell."""
    tmp = tmp_path_factory.mktemp("lab")
    notebooks = tmp / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_ok.ipynb", "import tensorflow as tf\ntf.constant(1).numpy()")
    write_notebook(notebooks / "02_fails.ipynb", "answer = 42", 'message = "broken on purpose"\nraise ValueError(message)',
                   "print('never runs')")
    result = subprocess.run(
        [sys.executable, "-m", "labtools", "notebooks", "--catalog", "offline", f"--notebooks-dir={notebooks}",
         f"--output-dir={tmp / 'executed'}", f"--report-dir={tmp / 'report'}"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    return tmp, result


def test_a_failing_notebook_fails_the_run(failing_lab_run):
    _, result = failing_lab_run
    assert result.returncode == 1


def test_the_failure_names_the_notebook_cell_error_and_log(failing_lab_run):
    _, result = failing_lab_run
    assert ("02_fails.ipynb failed at cell 2:\n    message = \"broken on purpose\"\n    raise ValueError(message)\n"
            "  ValueError: broken on purpose\n  log: build/logs/02_fails.log\n") in result.stdout


def test_the_run_prints_one_line_per_notebook_and_a_summary(failing_lab_run):
    _, result = failing_lab_run
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines if line.startswith("  0")] == ["01_ok.ipynb", "02_fails.ipynb"]
    assert lines[-1].startswith("1 of 2 notebooks ran in ") and "(failed)" in lines[-1]
    assert len(lines) <= 12, result.stdout


def test_tensorflow_and_jupyter_noise_goes_to_the_logs(failing_lab_run):
    _, result = failing_lab_run
    assert "cuda" not in (result.stdout + result.stderr).lower()
    assert "TF_ENABLE_ONEDNN_OPTS" not in result.stdout + result.stderr


def test_the_report_shows_the_failure(failing_lab_run):
    tmp, _ = failing_lab_run
    index = (tmp / "report" / "index.html").read_text()
    assert '<a href="01_ok.html">01_ok.ipynb</a>' in index and '<td class="ok">ok</td>' in index
    assert '<td class="failed">failed</td>' in index and "ValueError: broken on purpose" in index
    assert (tmp / "report" / "02_fails.html").exists()


def test_a_missing_program_is_one_sentence(monkeypatch, tmp_path, capsys):
    ghost = Program("no-such-program-here", "LAB_NO_SUCH_PROGRAM", "usr/bin/no-such-program-here")
    monkeypatch.setitem(components.COMPONENTS, "prometheus",
                        components.Component("Prometheus", (ghost,), ("prometheus",), ("prometheus",)))
    assert components.main(["check", "prometheus"]) == 1
    assert capsys.readouterr().out == (
        "Prometheus is missing: install it (Debian or Ubuntu: `apt-get install prometheus`; macOS: "
        "`brew install prometheus`), or set LAB_NO_SUCH_PROGRAM to its binary.\n")


def test_a_variable_naming_no_file_counts_as_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_PROMETHEUS", str(tmp_path / "nothing"))
    monkeypatch.setattr(components.shutil, "which", lambda name: None)
    assert components.missing_programs(components.COMPONENTS["prometheus"]) != []


def test_without_apt_or_brew_install_says_what_to_do(monkeypatch):
    ghost = Program("no-such-program-here", "LAB_NO_SUCH_PROGRAM", "usr/bin/no-such-program-here")
    component = components.Component("Prometheus", (ghost,), ("prometheus",), ("prometheus",))
    monkeypatch.setattr(components.shutil, "which", lambda name: None)
    monkeypatch.setattr(components.platform, "system", lambda: "Windows")
    line, present = components.install(component)
    assert present is False and line.startswith("Prometheus is missing: install it")


def debian_archive_answers(package):
    """Whether the Debian archive serving `package` answers here (`make setup` needs it; CI may be offline)."""
    import requests

    uris = subprocess.run(["apt-get", "download", "--print-uris", package], capture_output=True, text=True)
    if uris.returncode != 0 or not uris.stdout.startswith("'"):
        return False
    try:
        return requests.head(uris.stdout.split("'")[1], timeout=5).status_code < 400
    except requests.RequestException:
        return False


def build_deb(directory, name, script):
    """A Debian package `name` holding usr/bin/`name`, an executable shell script, built with dpkg-deb."""
    root = directory / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: lab <lab@example.org>\nDescription: test package\n")
    program = root / "usr" / "bin" / name
    program.parent.mkdir(parents=True)
    program.write_text(script)
    program.chmod(0o755)
    deb = directory / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_rootless_install_downloads_with_apt_and_unpacks_with_dpkg_deb(tmp_path, monkeypatch):
    """The rootless path with a stand-in `apt-get` that hands over a local package: no network needed."""
    deb = build_deb(tmp_path / "debs", "labtoy-server", "#!/bin/sh\necho labtoy-server, version 1.0\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "apt-get-calls"
    (fake_bin / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncp {deb} .\n')
    (fake_bin / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    prefix = tmp_path / "prefix"
    assert components.unpack_debian_packages(["labtoy-server"], prefix=prefix)
    assert calls.read_text() == "download labtoy-server\n"
    version = subprocess.run([prefix / "usr" / "bin" / "labtoy-server"], capture_output=True, text=True)
    assert version.stdout == "labtoy-server, version 1.0\n"


def test_rootless_install_unpacks_debians_prometheus(tmp_path):
    if not debian_archive_answers("prometheus"):
        pytest.skip("Debian's archive does not answer from here (the stand-in test above covers the mechanism)")
    assert components.unpack_debian_packages(["prometheus"], prefix=tmp_path)
    version = subprocess.run([tmp_path / "usr" / "bin" / "prometheus", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "prometheus, version" in version.stdout + version.stderr


def test_catch_up_runs_the_notebooks_up_to_one(tmp_path):
    from labtools.notebooks import notebook_paths

    for name in ("01_a", "02_b", "03_c", "04_d"):
        write_notebook(tmp_path / f"{name}.ipynb", "1")
    assert [p.name for p in notebook_paths(tmp_path, upto="03")] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]


def test_missing_exports_name_the_notebook_and_the_catch_up(tmp_path):
    from utils.deploy import exported_versions
    from utils.errors import LabError

    with pytest.raises(LabError, match=r": run notebook 03_export_savedmodel first, or `make catch-up UPTO=03` "
                                       r"to run notebooks 01-03\.$"):
        exported_versions(tmp_path)


def test_models_of_both_catalogs_are_one_sentence_naming_them_and_the_fix(tmp_path):
    from utils.deploy import exported_versions
    from utils.errors import LabError

    for name, version in (("efficientnet_lite", 224), ("resnet", 50)):
        (tmp_path / name / str(version)).mkdir(parents=True)
        (tmp_path / name / str(version) / "saved_model.pb").touch()
    with pytest.raises(LabError, match=rf"^{tmp_path} holds efficientnet_lite \(catalog 'offline'\) and resnet "
                                       r"\(catalog 'tfhub'\), exported in sessions whose catalog differed, and the "
                                       r"serving notebooks serve one model: delete the folder of the one you do not "
                                       rf"want, e\.g\. `rm -r {tmp_path}/efficientnet_lite`\.$"):
        exported_versions(tmp_path)


def test_a_missing_config_names_the_notebook_that_writes_it(tmp_path):
    from utils.deploy import require_file
    from utils.errors import LabError

    with pytest.raises(LabError, match=r"models.local.config is missing: run notebook 04_deploy first, or "
                                       r"`make catch-up UPTO=04`"):
        require_file(tmp_path / "models.local.config", "04_deploy")


def solution_notebook(path):
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(cells=[
        md("# T\n\nOverview.\n\n1. One"), code("answer = 41", execution_count=1,
                                                outputs=[nbformat.v4.new_output("stream", text="x")]),
        md("## Exercises\n\n1. Add one."), md("## Solutions"),
        code("answer += 1", metadata={"tags": ["solution"], "jupyter": {"source_hidden": True}}),
        code("assert answer == 42", metadata={"tags": ["solution-check"]}),
    ])
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "lab", "language": "python"}
    nbformat.write(notebook, path)


def test_learner_copies_stub_solutions_keep_checks_and_clear_outputs(tmp_path):
    from labtools.learner import STUB, write_learner_copies

    (tmp_path / "notebooks").mkdir()
    solution_notebook(tmp_path / "notebooks" / "01_t.ipynb")
    (copy_path,) = write_learner_copies(tmp_path / "notebooks", tmp_path / "learner")
    copy = nbformat.read(copy_path, as_version=4)
    nbformat.validate(copy)
    sources = [c.source for c in copy.cells if c.cell_type == "code"]
    assert sources == ["answer = 41", STUB, "assert answer == 42"]
    assert all(c.outputs == [] and c.execution_count is None for c in copy.cells if c.cell_type == "code")
    assert not [c for c in copy.cells if "solution" in c.metadata.get("tags", [])]


def test_learner_copies_equal_the_notebooks_up_to_their_solutions(tmp_path):
    from labtools.learner import write_learner_copies

    for copy_path in write_learner_copies(learner_dir=tmp_path):
        master = nbformat.read(PROJECT_ROOT / "notebooks" / copy_path.name, as_version=4)
        copy = nbformat.read(copy_path, as_version=4)
        solutions = next((i for i, c in enumerate(master.cells) if c.source.startswith("## Solutions")),
                         len(master.cells))
        assert [c.source for c in copy.cells[:solutions]] == [c.source for c in master.cells[:solutions]]
