"""zscir_infer never imports torch, open_clip, zscir_train or zscir_export: a deployment runs without them.

Checked three ways: in a subprocess where those modules cannot be imported at all (an import hook
raises, and records who tried), the runtime indexes a gallery and answers queries with every method;
statically, no module of the package names them in an import, not even inside a function; and the
runtime's own tests (a chosen subset) are collected and pass under pytest with torch unimportable, so
the suite's shared setup (tests/conftest.py, tests/fixtures/) works on a base install.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

import zscir_infer

FORBIDDEN = ("torch", "torchvision", "open_clip", "zscir_train", "zscir_export")

CHILD = textwrap.dedent("""
    import importlib.abc, json, sys, traceback
    FORBIDDEN = {forbidden!r}
    attempts = []

    class Forbid(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                importer = next((f.filename for f in reversed(traceback.extract_stack()[:-1])
                                 if "importlib" not in f.filename and "<frozen" not in f.filename), "?")
                attempts.append([name, importer])
                raise ImportError(f"{{name}} is not importable in this test")
            return None

    sys.meta_path.insert(0, Forbid())
    try:
        import torch  # noqa: F401  -- the hook works
        raise SystemExit("torch was importable")
    except ImportError:
        attempts.clear()

    from typer.testing import CliRunner
    import zscir_infer
    from zscir_infer import Runtime
    from zscir_infer.cli import app
    import zscir_infer.backends.ort, zscir_infer.backends.trt, zscir_infer.contact_sheet, zscir_eval

    bundle, images, gallery, show = sys.argv[1:5]
    runner = CliRunner()
    built = runner.invoke(app, ["index", images, "--bundle", bundle, "--out", gallery])
    assert built.exit_code == 0, built.output
    reference = images + "/im0.png"
    answer = runner.invoke(app, ["query", reference, "as a sketch", "-b", bundle, "-g", gallery, "-k", "3",
                                 "--json", "--show", show])
    assert answer.exit_code == 0, answer.output
    rt = Runtime(bundle)
    queries = {{m: rt.encode_queries([(reference, "as a sketch")], method=m).tolist()
               for m in zscir_infer.METHODS}}
    print(json.dumps({{"attempts": attempts, "answer": json.loads(answer.stdout), "queries": queries,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)}}))
""")


def test_the_runtime_indexes_and_answers_queries_with_torch_unimportable(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 40, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(forbidden=FORBIDDEN))
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_bundle), str(images), str(tmp_path / "gallery"), str(tmp_path / "s.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    ours = [(name, importer) for name, importer in report["attempts"] if "zscir_infer" in importer]
    assert ours == [], f"zscir_infer tried to import {ours}"
    assert report["loaded"] == []
    assert [h["rank"] for h in report["answer"]["results"]] == [1, 2, 3]
    assert set(report["queries"]) == {"phi", "slerp", "image", "text", "average"}
    assert (tmp_path / "s.png").is_file()


def test_no_module_of_the_package_names_a_forbidden_import():
    package = Path(zscir_infer.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
            else:
                continue
            offenders += [f"{path.relative_to(package)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


# Runtime tests that need neither torch nor a torch-built fixture (tiny_bundle is exported with torch).
TORCH_FREE_TESTS = ("tests/test_infer_sources.py", "tests/test_infer_search.py")
REPO = Path(__file__).resolve().parent.parent

# Loaded by the child interpreter at start-up (PYTHONPATH): the forbidden modules behave as not installed.
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


def test_the_runtime_tests_pass_under_pytest_with_torch_unimportable(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE.format(forbidden=FORBIDDEN))
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # the outer run's -k/-m are not the child's
    env |= {"PYTHONPATH": os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "ZSCIR_FORBID_REPORT": str(report)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *TORCH_FREE_TESTS, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    seen = json.loads(report.read_text())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + f"\nimport attempts: {seen['attempts']}"
    assert seen["loaded"] == []
    suite = ET.parse(junit).getroot().find("testsuite")
    ran, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert int(suite.get("failures")) == int(suite.get("errors")) == 0
    assert ran - skipped >= 20, f"only {ran - skipped} of the runtime tests ran"
    reasons = [s.get("message", "") for s in suite.iter("skipped")]
    assert not [r for r in reasons if any(name in r for name in FORBIDDEN)], reasons  # none skipped for want of torch
