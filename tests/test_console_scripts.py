"""The installed console scripts of zscir: each resolves to a typer app that answers --help with its commands."""

from importlib.metadata import distribution

import pytest
from typer.testing import CliRunner

runner = CliRunner()
SCRIPTS = {ep.name: ep for ep in distribution("zscir").entry_points if ep.group == "console_scripts"}
COMMANDS = {
    "zscir-train": ["world", "world-clip", "world-report", "lincir", "pic2word", "tat", "world-eval"],
    "zscir-infer": ["index", "query", "bundle-info", "engines"],
    "zscir-bench": ["latency", "search", "cold-start", "train-cost", "accuracy", "all"],
    "zscir-eval": ["cirr", "circo", "fashioniq", "genecis", "imagenet-r"],
    "zscir-export": ["--ckpt", "--fp16", "--engine", "--triton"],
}


def test_every_script_is_listed_here():
    assert set(SCRIPTS) == set(COMMANDS)


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_script_help_lists_its_commands(script):
    app = SCRIPTS[script].load()
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for command in COMMANDS[script]:
        assert command in result.output, f"{script} --help does not list {command}"
