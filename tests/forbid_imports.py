"""Running code as if torch, open_clip, zscir_train and zscir_export were not installed (a base install).

`forbidding_env(tmp_path)` gives the environment for a subprocess whose interpreter loads an import
hook at start-up (sitecustomize on PYTHONPATH): importing a forbidden module raises ModuleNotFoundError,
and at exit the child writes which imports were tried (and from which file) and which forbidden modules
got loaded anyway. `named_imports` finds, statically, every module a source file imports.
"""

from __future__ import annotations

import ast
import json
import os
import textwrap
from pathlib import Path

FORBIDDEN = ("torch", "torchvision", "open_clip", "zscir_train", "zscir_export")

SITECUSTOMIZE = textwrap.dedent("""
    import atexit, importlib.abc, json, os, sys, traceback
    FORBIDDEN = {forbidden!r}
    attempts = []

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                importer = next((f.filename for f in reversed(traceback.extract_stack()[:-1])
                                 if "importlib" not in f.filename and "<frozen" not in f.filename), "?")
                attempts.append([name, importer])
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Forbid())

    @atexit.register
    def _report():
        with open(os.environ["ZSCIR_FORBID_REPORT"], "w") as f:
            json.dump({{"attempts": attempts,
                       "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)}}, f)
""")


def forbidding_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment for the child, the file its import report is written to at exit)."""
    hook = tmp_path / "forbid-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE.format(forbidden=FORBIDDEN))
    report = tmp_path / "forbid-report.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # the outer run's -k/-m are not the child's
    env |= {"PYTHONPATH": os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "ZSCIR_FORBID_REPORT": str(report)}
    return env, report


def read_report(report: Path) -> dict:
    return json.loads(report.read_text())


def named_imports(tree: ast.AST, skip: set[ast.AST] = frozenset()) -> list[tuple[int, str]]:
    """(line, module) of every import in tree, inside functions too, and of importlib.import_module("x")
    and __import__("x") with a literal name; nodes in skip are left out."""
    found = []
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        else:
            continue
        found += [(node.lineno, name) for name in names]
    return found
