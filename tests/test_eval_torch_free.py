"""zscir_eval never imports torch, open_clip, zscir_train or zscir_export, except where `zscir-eval --torch`
builds the PyTorch reference (`cli.torch_encoder`): the encoder is passed in, so a deployment evaluates
bundles without them.

Checked statically (every import in the package, even inside functions) and by importing every module
and running `zscir-eval --help` in a subprocess where those modules cannot be imported at all.
"""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import zscir_eval
from tests.forbid_imports import FORBIDDEN, forbidding_env, named_imports, read_report

TORCH_BRANCH = ("cli.py", "torch_encoder")  # the one function allowed to import them, lazily

CHILD = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import zscir_eval
    for module in pkgutil.iter_modules(zscir_eval.__path__):
        importlib.import_module(f"zscir_eval.{module.name}")
    from typer.testing import CliRunner
    from zscir_eval.cli import app

    result = CliRunner().invoke(app, ["cirr", "--help"])
    print(json.dumps({"exit_code": result.exit_code, "help": result.output}))
""")


def test_no_module_imports_torch_outside_the_torch_branch():
    package = Path(zscir_eval.__file__).parent
    offenders, branch_imports = [], []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (path.name, node.name) == TORCH_BRANCH:
                allowed = set(ast.walk(node))
                branch_imports = [(line, name) for line, name in named_imports(node)
                                  if name.split(".")[0] in FORBIDDEN]
        offenders += [f"{path.name}:{line} {name}" for line, name in named_imports(tree, allowed)
                      if name.split(".")[0] in FORBIDDEN]
    assert offenders == []
    assert any(name == "zscir_train.reference" for _, name in branch_imports)  # the check sees imports


def test_every_module_and_the_cli_load_without_torch(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env, imports = forbidding_env(tmp_path)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["exit_code"] == 0 and "--torch" in report["help"]
    assert read_report(imports)["loaded"] == []
