"""The console scripts of zscir: every one declared in pyproject.toml is installed with the same target and
resolves to a typer app that answers --help with its commands."""

import re
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from typer.testing import CliRunner

runner = CliRunner()
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
SCRIPTS = {ep.name: ep for ep in distribution("zscir").entry_points if ep.group == "console_scripts"}
COMMANDS = {
    "zscir-train": ["world", "world-clip", "world-report", "lincir", "pic2word", "tat", "world-eval"],
    "zscir-infer": ["index", "query", "bundle-info", "engines"],
    "zscir-bench": ["latency", "search", "cold-start", "train-cost", "accuracy", "all"],
    "zscir-eval": ["cirr", "circo", "fashioniq", "genecis", "imagenet-r"],
    "zscir-export": ["--ckpt", "--fp16", "--engine", "--triton"],
}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="reads pyproject.toml with tomllib (Python 3.11+)")
def test_every_declared_script_is_installed_with_its_target_and_listed_here():
    import tomllib

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    installed = {name: ep.value for name, ep in SCRIPTS.items()}
    assert installed == declared, "the installed scripts differ from pyproject.toml's: reinstall (make setup)"
    assert set(declared) == set(COMMANDS)


def test_every_installed_script_is_listed_here():
    assert set(SCRIPTS) == set(COMMANDS)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_script_help_lists_its_commands(script):
    app = SCRIPTS[script].load()
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for command in COMMANDS[script]:  # a whole word: "all" in "install" or "world" in "world-clip" is not it
        assert re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", result.output), \
            f"{script} --help does not list {command}"
