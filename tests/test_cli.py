"""tensorflow_model_server's flag syntax."""

import subprocess
import sys

import pytest

from model_server.cli import FlagError, parse_flags


def test_defaults_match_tensorflow_model_server():
    options = parse_flags(["--model_base_path=/models/m"])
    assert (options.port, options.rest_api_port, options.model_name) == (8500, 0, "default")
    assert options.file_system_poll_wait_seconds == 1 and options.enable_model_warmup is True
    assert options.enable_batching is False and options.bind_address == "127.0.0.1"


@pytest.mark.parametrize("argv, value", [
    (["--enable_batching"], True),
    (["--enable_batching=true"], True),
    (["--enable_batching=false"], False),
    (["--noenable_model_warmup"], False),
])
def test_boolean_syntax(argv, value):
    options = parse_flags(["--model_base_path=/m", *argv])
    flag = argv[0].lstrip("-").split("=")[0].removeprefix("no")
    assert getattr(options, flag) is value


def test_value_may_follow_as_the_next_argument():
    assert parse_flags(["--model_base_path", "/m", "--port", "9000"]).port == 9000


def test_config_file_and_base_path_may_both_be_given_as_the_docker_image_does():
    options = parse_flags(["--model_base_path=/models/model", "--model_config_file=/configs/models.config"])
    assert options.model_config_file == "/configs/models.config"


@pytest.mark.parametrize("argv, message", [
    (["--model_base_path=/m", "stray"], "Unexpected argument 'stray'"),
    (["--model_base_path=/m", "--port"], "Missing value for flag '--port'"),
    (["--model_base_path=/m", "--enable_batching=perhaps"], "Illegal value 'perhaps' specified for bool flag"),
    (["--model_base_path=/m", "--use_tflite_model"], "TensorFlow Serving flag this server does not support"),
])
def test_flag_errors(argv, message):
    with pytest.raises(FlagError, match=message):
        parse_flags(argv)


# Runs model_server.cli.main as `python -m model_server` does, then reports whether TensorFlow was imported.
MAIN_THEN_REPORT_TENSORFLOW = """
import sys
from model_server.cli import main
code = main(sys.argv[1:])
print("exit", code, "tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("flag", ["--no_such_flag", "--help"])
def test_a_refused_command_line_is_answered_before_tensorflow_is_imported(flag):
    result = subprocess.run([sys.executable, "-c", MAIN_THEN_REPORT_TENSORFLOW, flag], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "exit 1 tensorflow imported: False"


def test_the_server_limits_glibc_malloc_to_two_arenas_unless_the_environment_says(monkeypatch):
    from model_server.cli import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True, "this machine's C library is glibc"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False
