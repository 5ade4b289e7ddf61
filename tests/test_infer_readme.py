"""The README's Python example runs as written: it indexes a folder and runs composed queries."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## The Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_indexes_a_folder_and_runs_queries(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zscir-out").mkdir()
    (tmp_path / "zscir-out" / "bundle").symlink_to(tiny_bundle)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("star.png", "circle.png", "square.png", "moon.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / name)
    scope: dict = {}
    exec(compile(python_example(), str(README), "exec"), scope)  # noqa: S102 -- the README's own code
    out = capsys.readouterr().out
    assert "4 images in the gallery, 4 added, 0 bad files" in out
    lines = [line for line in out.splitlines() if line.startswith(("make it red", "as a sketch"))]
    assert len(lines) == 2 and all("star.png" not in line for line in lines)  # exclude_ref left it out
    assert all(line.count("png") == 3 for line in lines)  # k=3 of the 3 other images
    assert scope["xq"].shape == (1, 48) and np.allclose(np.linalg.norm(scope["xq"], axis=1), 1, atol=1e-5)
    assert scope["I"].shape == (1, 3) and all(p is not None and p.name != "star.png" for p in scope["paths"][0])
