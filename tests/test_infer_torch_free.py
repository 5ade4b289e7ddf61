"""zscir_infer never imports torch, open_clip, zscir_train or zscir_export: a deployment runs without them.

Checked three ways: in a subprocess where those modules cannot be imported at all (an import hook
raises, and records who tried), the runtime indexes a gallery and answers queries with every method;
statically, no module of the package names them in an import, not even inside a function; and the
runtime's own tests (a chosen subset) are collected and pass under pytest with torch unimportable, so
the suite's shared setup (tests/conftest.py, tests/fixtures/) works on a base install.
"""

import ast
import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

import zscir_infer
from tests.forbid_imports import FORBIDDEN, forbidding_env, named_imports, read_report

CHILD = textwrap.dedent("""
    import json, sys
    try:
        import torch  # noqa: F401  -- the hook works
        raise SystemExit("torch was importable")
    except ImportError:
        pass

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
    queries = {m: rt.encode_queries([(reference, "as a sketch")], method=m).tolist()
               for m in zscir_infer.METHODS}
    print(json.dumps({"answer": json.loads(answer.stdout), "queries": queries}))
""")


def test_the_runtime_indexes_and_answers_queries_with_torch_unimportable(tiny_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 40, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env, imports = forbidding_env(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_bundle), str(images), str(tmp_path / "gallery"), str(tmp_path / "s.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report, seen = json.loads(done.stdout.splitlines()[-1]), read_report(imports)
    ours = [(name, importer) for name, importer in seen["attempts"] if "zscir_infer" in importer]
    assert ours == [], f"zscir_infer tried to import {ours}"
    assert seen["loaded"] == []
    assert [h["rank"] for h in report["answer"]["results"]] == [1, 2, 3]
    assert set(report["queries"]) == {"phi", "slerp", "image", "text", "average", "sum"}
    assert (tmp_path / "s.png").is_file()


def test_no_module_of_the_package_names_a_forbidden_import():
    package = Path(zscir_infer.__file__).parent
    offenders = [f"{path.relative_to(package)}:{line} {name}" for path in sorted(package.rglob("*.py"))
                 for line, name in named_imports(ast.parse(path.read_text(), filename=str(path)))
                 if name.split(".")[0] in FORBIDDEN]
    assert offenders == []


# Runtime tests that need neither torch nor a torch-built fixture (tiny_bundle is exported with torch).
TORCH_FREE_TESTS = ("tests/test_infer_sources.py", "tests/test_infer_search.py")
REPO = Path(__file__).resolve().parent.parent

def test_the_runtime_tests_pass_under_pytest_with_torch_unimportable(tmp_path):
    env, report = forbidding_env(tmp_path)
    junit = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *TORCH_FREE_TESTS, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    seen = read_report(report)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + f"\nimport attempts: {seen['attempts']}"
    assert seen["loaded"] == []
    suite = ET.parse(junit).getroot().find("testsuite")
    ran, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert int(suite.get("failures")) == int(suite.get("errors")) == 0
    assert ran - skipped >= 20, f"only {ran - skipped} of the runtime tests ran"
    reasons = [s.get("message", "") for s in suite.iter("skipped")]
    assert not [r for r in reasons if any(name in r for name in FORBIDDEN)], reasons  # none skipped for want of torch
