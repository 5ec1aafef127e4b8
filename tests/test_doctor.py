"""`make doctor`: each check that fails says so in one line, with its fix, and fails the exit code."""

import socket

import pytest

from labtools import doctor
from utils import catalog
from utils.runtime.processes import Program


def test_a_busy_port_names_its_holder_and_the_fix():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        check = doctor.check_port(port, "rest_port")
    assert check.status == "FAIL"
    assert check.detail.startswith("held by ") and "(pid " in check.detail
    assert check.fix == "stop it, or change `rest_port` in the notebooks' parameters cells"


def test_a_cold_cache_is_flagged_with_the_command_that_warms_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    check = doctor.check_cache("offline")
    assert check.status == "warn"
    assert check.detail == "not in the cache: EfficientNet-Lite0, EfficientNet-Lite1 (the first run converts them)"
    assert check.fix == "make models CATALOG=offline"


def test_a_warm_cache_is_ok(monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    for model in catalog.CATALOGS["offline"]:
        catalog.cached_model_dir(model).mkdir(parents=True)
        (catalog.cached_model_dir(model) / "saved_model.pb").write_bytes(b"")
    assert doctor.check_cache("offline").status == "ok"


def test_a_missing_binary_fails_with_make_setup(monkeypatch):
    monkeypatch.setattr(doctor, "PROMETHEUS", Program("no-such-prometheus", "LAB_NO_SUCH", "usr/bin/nope"))
    check = doctor.check_prometheus()
    assert (check.status, check.fix) == ("FAIL", "make setup")


def test_a_failing_check_fails_the_exit_code_and_the_table_shows_its_fix(monkeypatch, capsys):
    failing = doctor.Check("Prometheus", "FAIL", "not found", "make setup")
    monkeypatch.setattr(doctor, "all_checks", lambda: [doctor.Check("Python", "ok", "3.11"), failing])
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "Prometheus  FAIL    not found  -> make setup" in out
    assert "1 check(s) failed" in out


def test_only_warnings_still_pass(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "all_checks", lambda: [doctor.Check("Docker", "warn", "no engine", "nothing")])
    assert doctor.main([]) == 0
    assert capsys.readouterr().out.endswith("The lab will run on this machine.\n")


def test_the_real_checks_run_and_each_one_that_is_not_ok_names_its_fix(monkeypatch, capsys):
    """doctor.all_checks() as `make doctor` runs it, on this machine (TF Hub probed on a closed loopback port)."""
    monkeypatch.delenv(catalog.TFHUB_MIRROR_ENV, raising=False)
    monkeypatch.setattr(catalog, "TFHUB_PROBE_URL", "http://127.0.0.1:9/")
    checks = doctor.all_checks()
    names = [check.name for check in checks]
    assert len(names) == len(set(names)), names
    assert {"TF Hub", "bundle", *(f"{name} models" for name in catalog.CATALOGS)} <= set(names)
    assert {check.status for check in checks} <= {"ok", "warn", "FAIL"}
    assert [check.name for check in checks if check.status != "ok" and not check.fix] == []
    monkeypatch.setattr(doctor, "all_checks", lambda: checks)
    failed = [check for check in checks if check.status == "FAIL"]
    assert doctor.main([]) == (1 if failed else 0)
    out = capsys.readouterr().out
    assert out.startswith(doctor.table(checks) + "\n")
    assert all(f"  -> {check.fix}" in out for check in checks if check.status != "ok")


@pytest.mark.parametrize("mirror_exists", [True, False])
def test_a_directory_mirror_is_checked_for_the_models_tarball(monkeypatch, tmp_path, mirror_exists):
    monkeypatch.setenv("LAB_TFHUB_MIRROR", str(tmp_path))
    if mirror_exists:
        tarball = tmp_path / "google/imagenet/resnet_v2_50/classification/5.tar.gz"
        tarball.parent.mkdir(parents=True)
        tarball.write_bytes(b"")
    assert catalog.tfhub_reachable() is mirror_exists


@pytest.mark.parametrize("engine, binary, expected", [
    (True, None, ("ok", "a Docker engine answers: notebooks 04-06 run IMAGE, 07's replicas the lab's stand-in")),
    (True, "/bin/tfs", ("ok", "a Docker engine answers: notebooks 04-06 run IMAGE, 07's replicas the binary /bin/tfs")),
    (False, "/bin/tfs", ("ok", "no Docker engine; notebooks 04-07 run the binary /bin/tfs")),
    (False, None, ("warn", "no Docker engine, no tensorflow_model_server: notebooks 04-07 run the lab's stand-in")),
])
def test_the_tf_serving_check_names_the_server_each_notebook_runs(monkeypatch, engine, binary, expected):
    monkeypatch.setattr(doctor, "docker_engine_answers", lambda: engine)
    monkeypatch.setattr(doctor, "TFSERVING_BINARY", Program("tfs", "LAB_TEST_TFS", "none"))
    monkeypatch.setattr(Program, "find", lambda self: binary)
    monkeypatch.setattr(doctor, "tfserving_image", lambda: "IMAGE")
    check = doctor.check_tfserving()
    assert (check.status, check.detail) == expected
