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

FORBIDDEN = ("torch", "torchvision", "open_clip", "zscir_train", "zscir_export")
TORCH_BRANCH = ("cli.py", "torch_encoder")  # the one function allowed to import them, lazily

CHILD = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {forbidden!r}:
                raise ImportError(f"{{name}} is not importable in this test")
            return None

    sys.meta_path.insert(0, Forbid())
    import zscir_eval
    for module in pkgutil.iter_modules(zscir_eval.__path__):
        importlib.import_module(f"zscir_eval.{{module.name}}")
    from typer.testing import CliRunner
    from zscir_eval.cli import app

    result = CliRunner().invoke(app, ["cirr", "--help"])
    print(json.dumps({{"exit_code": result.exit_code, "help": result.output,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})}}))
""")


def forbidden_imports(tree: ast.AST, allowed: set[ast.AST]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if node in allowed:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_no_module_imports_torch_outside_the_torch_branch():
    package = Path(zscir_eval.__file__).parent
    offenders, branch_imports = [], []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (path.name, node.name) == TORCH_BRANCH:
                allowed = set(ast.walk(node))
                branch_imports = forbidden_imports(node, set())
        offenders += [f"{path.name}:{line} {name}" for line, name in forbidden_imports(tree, allowed)]
    assert offenders == []
    assert any(name == "zscir_train.reference" for _, name in branch_imports)  # the check sees imports


def test_every_module_and_the_cli_load_without_torch(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(forbidden=FORBIDDEN))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["exit_code"] == 0 and "--torch" in report["help"]
    assert report["loaded"] == []
