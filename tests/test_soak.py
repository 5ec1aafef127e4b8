"""`python -m labtools soak`: its verdict, and its refusals before any server starts."""

import re

import pytest

from labtools.soak import Tally, main, verdict


def test_a_soak_without_failures_and_flat_memory_passes():
    tally = Tally(answered=1000, config_changes=30)
    passed, lines = verdict([(0.0, 500_000), (6.0, 900_000), (60.0, 940_000)], tally, warm_minute=6,
                            max_growth=0.05)
    assert passed
    assert lines[1] == "RSS: 879 MiB at minute 6, 918 MiB at the end (+4.4%), peak 918 MiB"


def test_memory_that_grows_past_the_bound_fails():
    passed, lines = verdict([(6.0, 900_000), (60.0, 1_000_000)], Tally(answered=10), warm_minute=6,
                            max_growth=0.05)
    assert not passed and "(+11.1%)" in lines[1]


def test_one_failed_request_fails():
    tally = Tally(answered=10)
    tally.count("StatusCode.UNAVAILABLE: connection reset")
    passed, lines = verdict([(6.0, 900_000), (60.0, 900_000)], tally, warm_minute=6, max_growth=0.05)
    assert not passed
    assert lines[0] == "requests: 10 answered, 1 failed; config changes: 0"
    assert lines[2] == "  failure: StatusCode.UNAVAILABLE: connection reset"


@pytest.mark.parametrize("versions, message", [
    ((), r"^error: No exported models under .*: run notebook 03_export_savedmodel first"),
    ((224,), r"^error: The soak rolls between two versions, and .*efficientnet_lite has \[224\]: run notebook 03 "),
])
def test_missing_versions_are_one_sentence_before_any_server_starts(tmp_path, capsys, versions, message):
    for version in versions:
        (tmp_path / "efficientnet_lite" / str(version)).mkdir(parents=True)
        (tmp_path / "efficientnet_lite" / str(version) / "saved_model.pb").touch()
    assert main(["--models-dir", str(tmp_path), "--minutes", "0.1"]) == 2
    assert re.match(message, capsys.readouterr().out)
