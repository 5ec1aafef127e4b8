"""Code is split by audience: `labtools` holds the commands, `utils` only what notebooks import."""

import ast
import os
import importlib

import pytest

from conftest import PROJECT_ROOT
from labtools.__main__ import COMMANDS, main


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_a_module_with_main(command):
    assert callable(importlib.import_module(f"labtools.{command}").main)


def test_unknown_command_is_one_clear_sentence(capsys):
    assert main(["nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'nope'.\n")


def test_no_arguments_list_the_commands(capsys):
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert [command for command in COMMANDS if f"  {command} " not in listing] == []


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "utils").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PROJECT_ROOT / "utils")))
def test_utils_modules_are_not_commands(path):
    tree = ast.parse(path.read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "main" not in functions and "argparse" not in imported


def test_native_stderr_of_an_import_goes_to_the_log_and_stderr_comes_back(tmp_path, capfd):
    from utils.runtime.processes import stderr_to

    log = tmp_path / "logs" / "imports.log"
    with stderr_to(log):
        os.write(2, b"I0000 a TensorFlow start-up line\n")
    os.write(2, b"after\n")
    assert log.read_bytes() == b"I0000 a TensorFlow start-up line\n"
    assert capfd.readouterr().err == "after\n"
