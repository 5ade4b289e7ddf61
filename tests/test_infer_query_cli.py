"""`zscir-infer query` and `bundle-info` through CliRunner: results equal a numpy brute-force oracle on
the runtime's own features, batch files, contact sheets, default locations, and every error path."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zscir_infer import Runtime
from zscir_infer.cli import app

SIZES = [(40, 30), (30, 40), (64, 64), (17, 90), (120, 33), (32, 32), (50, 51), (8, 8), (200, 150), (33, 65)]
SCORE_TOL = 1e-5
FLAT_MEMORY_MB = 15  # what 9,000 more queries may add to the peak RSS of `query --batch`
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bundle):
    """A gallery of varied images built by `zscir-infer index`, and the oracle's gallery features."""
    root = tmp_path_factory.mktemp("query-cli")
    rng = np.random.default_rng(7)
    images = root / "images"
    for i, (w, h) in enumerate(SIZES):
        (images / f"set{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"set{i % 2}" / f"im{i}.png")
    gallery = root / "gallery"
    result = runner.invoke(app, ["index", str(images), "--bundle", str(tiny_bundle), "--out", str(gallery)])
    assert result.exit_code == 0, result.output
    paths = sorted(images.rglob("*.png"))
    names = [p.relative_to(images).as_posix() for p in paths]
    rt = Runtime(tiny_bundle)
    return {"root": root, "images": images, "gallery": gallery, "bundle": tiny_bundle, "paths": paths,
            "names": names, "xb": rt.encode_images(paths), "runtime": rt}


def oracle(world, reference, text, k, method="phi", exclude=None):
    """(names, scores) of the exact top k by inner product, the excluded path left out."""
    xq = world["runtime"].encode_queries([(reference, text)], method=method)[0]
    scores = world["xb"] @ xq  # [N]
    order = [i for i in np.argsort(-scores, kind="stable") if exclude is None or world["paths"][i] != exclude]
    return [world["names"][i] for i in order[:k]], scores[order[:k]]


def query_json(world, *args):
    result = runner.invoke(app, ["query", *args, "--bundle", str(world["bundle"]), "--gallery",
                                 str(world["gallery"]), "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("method", ["phi", "slerp", "image", "text", "average"])
def test_results_equal_the_brute_force_oracle(world, method):
    reference = world["paths"][3]
    [out] = query_json(world, str(reference), "as a sketch", "-k", "4", "--method", method)
    names, scores = oracle(world, reference, "as a sketch", 4, method)
    assert [h["name"] for h in out["results"]] == names
    np.testing.assert_allclose([h["score"] for h in out["results"]], scores, atol=SCORE_TOL)
    assert [h["rank"] for h in out["results"]] == [1, 2, 3, 4] and out["method"] == method


def test_filter_keeps_only_the_matching_gallery_items(world):
    """`--filter` goes to the gallery store: the ranking is the oracle's, restricted to set1/."""
    reference = world["paths"][0]
    [out] = query_json(world, str(reference), "as a sketch", "-k", "3", "--filter", 'name like "set1/%"')
    names, _ = oracle(world, reference, "as a sketch", len(world["names"]))
    assert [h["name"] for h in out["results"]] == [n for n in names if n.startswith("set1/")][:3]
    result = runner.invoke(app, ["query", str(reference), "x", "--filter", "colour == 'red'", "-b",
                                 str(world["bundle"]), "-g", str(world["gallery"])])
    assert result.exit_code == 1 and "unknown field 'colour'" in result.stderr


def test_plain_output_prints_rank_score_and_path(world):
    reference = world["paths"][0]
    result = runner.invoke(app, ["query", str(reference), "make it red", "-k", "3", "-b", str(world["bundle"]),
                                 "-g", str(world["gallery"])])
    assert result.exit_code == 0, result.output
    names, scores = oracle(world, reference, "make it red", 3)
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert [r[2] for r in rows] == [str(world["images"] / n) for n in names]
    np.testing.assert_allclose([float(r[1]) for r in rows], scores, atol=1e-4)


def test_exclude_ref_drops_the_reference_and_keeps_k_results(world):
    reference = world["paths"][5]
    [out] = query_json(world, str(reference), "", "-k", str(len(SIZES)), "--method", "image")
    assert out["results"][0]["path"] == str(reference)  # the image itself is its own best match
    [out] = query_json(world, str(reference), "", "-k", "3", "--method", "image", "--exclude-ref")
    names, _ = oracle(world, reference, "", 3, "image", exclude=reference)
    assert [h["name"] for h in out["results"]] == names and str(reference) not in [h["path"] for h in out["results"]]


def test_a_reference_can_be_a_gallery_name(world):
    by_path = query_json(world, str(world["paths"][2]), "as a toy", "-k", "3")[0]["results"]
    by_name = query_json(world, world["names"][2], "as a toy", "-k", "3")[0]["results"]
    assert by_name == by_path


def test_a_jsonl_batch_with_targets_marks_hits_and_reports_recall(world, tmp_path):
    requests = [(world["names"][i], text) for i, text in ((0, "red"), (4, "as a sketch"), (7, "bigger"))]
    expected = [oracle(world, world["images"] / ref, text, 3)[0] for ref, text in requests]
    targets = [[expected[0][0]], [expected[1][2], "nowhere.png"], ["not-in-top-3.png"]]  # hit @1, hit @3, miss
    batch = tmp_path / "queries.jsonl"
    batch.write_text("".join(json.dumps({"reference": r, "text": t, "targets": g, "id": f"q{n}"}) + "\n"
                             for n, ((r, t), g) in enumerate(zip(requests, targets, strict=True))))
    outs = query_json(world, "--batch", str(batch), "-k", "3")
    assert [[h["name"] for h in o["results"]] for o in outs] == expected
    assert [[h["correct"] for h in o["results"]] for o in outs] == [[True, False, False], [False, False, True],
                                                                    [False, False, False]]
    plain = runner.invoke(app, ["query", "--batch", str(batch), "-k", "3", "-b", str(world["bundle"]),
                                "-g", str(world["gallery"])])
    assert plain.exit_code == 0, plain.output
    assert "recall over 3 queries with targets (phi): R@1 0.333  R@3 0.667" in plain.stdout
    assert plain.stdout.count("✓ target") == 2 and "[q1] query 2" in plain.stdout


def test_a_csv_batch_equals_single_queries(world, tmp_path):
    batch = tmp_path / "queries.csv"
    reference = world["paths"][1]
    batch.write_text(f"reference,text\n{reference},\"with a hat, and blue\"\n{world['names'][6]},as origami\n")
    outs = query_json(world, "--batch", str(batch), "-k", "2")
    singles = [query_json(world, str(reference), "with a hat, and blue", "-k", "2")[0],
               query_json(world, world["names"][6], "as origami", "-k", "2")[0]]
    assert [o["results"] for o in outs] == [s["results"] for s in singles]


def test_show_writes_png_and_html_contact_sheets(world, tmp_path):
    for suffix in (".png", ".html"):
        out = tmp_path / f"sheet{suffix}"
        result = runner.invoke(app, ["query", str(world["paths"][0]), "a <b>bold</b> change", "-k", "4",
                                     "--show", str(out), "-b", str(world["bundle"]), "-g", str(world["gallery"])])
        assert result.exit_code == 0, result.output
        if suffix == ".png":
            sheet = Image.open(out)
            assert sheet.format == "PNG" and sheet.width > 5 * 128 and sheet.height > 128
        else:
            page = out.read_text()
            assert page.count("<img src='data:image/png;base64,") == 5
            assert "a &lt;b&gt;bold&lt;/b&gt; change" in page and "<b>bold</b>" not in page


def test_defaults_come_from_the_environment_or_zscir_out(world, tmp_path, monkeypatch):
    monkeypatch.delenv("ZSCIR_BUNDLE", raising=False)
    monkeypatch.delenv("ZSCIR_GALLERY", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["query", str(world["paths"][0]), "as a sketch"])
    assert result.exit_code == 1
    assert "No bundle at zscir-out/bundle (the default; set ZSCIR_BUNDLE or pass --bundle)" in result.output
    assert "make demo" in result.output
    monkeypatch.setenv("ZSCIR_BUNDLE", str(world["bundle"]))
    result = runner.invoke(app, ["query", str(world["paths"][0]), "as a sketch"])
    assert result.exit_code == 1 and "No gallery at zscir-out/gallery (the default" in result.output
    (tmp_path / "zscir-out").mkdir()
    shutil.copytree(world["gallery"], tmp_path / "zscir-out" / "gallery")
    result = runner.invoke(app, ["query", str(world["paths"][0]), "as a sketch", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert len([line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]) == 2


def invoke_query(world, *args):
    return runner.invoke(app, ["query", *args, "-b", str(world["bundle"]), "-g", str(world["gallery"])])


def test_usage_errors(world, tmp_path):
    assert invoke_query(world).exit_code == 2  # neither REFERENCE TEXT nor --batch
    assert invoke_query(world, str(world["paths"][0])).exit_code == 2  # TEXT missing
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"reference": "im0.png", "text": "x"}\n')
    assert invoke_query(world, str(world["paths"][0]), "x", "--batch", str(batch)).exit_code == 2
    assert invoke_query(world, str(world["paths"][0]), "x", "-k", "0").exit_code == 2
    assert invoke_query(world, str(world["paths"][0]), "x", "--show", "sheet.jpg").exit_code == 2
    assert invoke_query(world, str(world["paths"][0]), "x", "--alpha", "1.5").exit_code == 2
    assert invoke_query(world, str(world["paths"][0]), "x", "--method", "product").exit_code == 2


@pytest.mark.parametrize(("args", "message"), [
    (["missing.png", "x"], "neither an image file nor the name of an image in gallery"),
    (["{image}", "x", "--template", "a photo that {{caption}}"], "does not contain the placeholder '$'"),
    (["{image}", "x", "--template", "a photo of $"], "has no '{caption}' field"),
    (["{image}", "x", "--device", "cuda"], "onnxruntime-gpu"),
    (["{image}", "x", "--precision", "int4"], "no int4 image_encoder"),
    (["{image}", "x", "--backend", "trt", "--device", "cuda"], "no fp32 TensorRT engines"),
])
def test_runtime_errors_are_one_clear_line(world, args, message):
    args = [a.format(image=world["paths"][0]) for a in args]
    result = invoke_query(world, *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bad_batch_files_name_the_line(world, tmp_path):
    batch = tmp_path / "bad.jsonl"
    batch.write_text('{"reference": "set0/im0.png", "text": "x"}\n{"reference": "set0/im0.png"}\n')
    result = invoke_query(world, "--batch", str(batch))
    assert result.exit_code == 1 and f"{batch}:2: needs 'reference'" in result.output
    batch.write_text('{"reference": "set0/im0.png", "text": "x"}\nnot json\n')
    result = invoke_query(world, "--batch", str(batch))
    assert result.exit_code == 1 and f"{batch}:2 is not JSON" in result.output


def test_a_gallery_of_another_bundle_is_refused(world, tiny_slerp_bundle):
    result = runner.invoke(app, ["query", str(world["paths"][0]), "x", "-b", str(tiny_slerp_bundle),
                                 "-g", str(world["gallery"])])
    assert result.exit_code == 1 and "was encoded by bundle" in result.output


def test_bundle_info_reports_the_manifest_and_the_providers(world, tmp_path):
    result = runner.invoke(app, ["bundle-info", str(world["bundle"])])
    assert result.exit_code == 0, result.output
    assert "placeholder '$' (id 259)" in result.stdout and "every file hashed and checked" in result.stdout
    assert "runs query_encoder (ort, cpu, fp32) on: CPUExecutionProvider" in result.stdout
    summary = json.loads(runner.invoke(app, ["bundle-info", str(world["bundle"]), "--json"]).stdout)
    assert summary["providers"]["image_encoder"] == ["CPUExecutionProvider"] and summary["verified"]
    damaged = shutil.copytree(world["bundle"], tmp_path / "bundle")
    (damaged / "tokenizer.json").write_text((damaged / "tokenizer.json").read_text() + " ")
    result = runner.invoke(app, ["bundle-info", str(damaged)])
    assert result.exit_code == 1 and "tokenizer.json (manifest tokenizer) is corrupt" in result.output


def test_the_reference_and_targets_match_gallery_files_through_links(world, tmp_path):
    """The shapes world hard-links its images into the CIRR layout: one file, two paths."""
    gallery_file = world["paths"][5]
    link = tmp_path / "elsewhere.png"
    link.hardlink_to(gallery_file)
    [out] = query_json(world, str(link), "", "-k", "3", "--method", "image", "--exclude-ref")
    assert str(gallery_file) not in [h["path"] for h in out["results"]]
    names, _ = oracle(world, gallery_file, "", 1, "image", exclude=gallery_file)
    target_link = tmp_path / "target.png"
    target_link.symlink_to(world["images"] / names[0])
    batch = tmp_path / "q.jsonl"
    batch.write_text(json.dumps({"reference": str(link), "text": "", "targets": [target_link.name]}) + "\n")
    [out] = query_json(world, "--batch", str(batch), "-k", "3", "--method", "image", "--exclude-ref")
    assert [h["correct"] for h in out["results"]] == [True, False, False]


def test_paths_inside_the_current_folder_print_relative(world, monkeypatch):
    monkeypatch.chdir(world["root"])
    result = invoke_query(world, str(world["paths"][0]), "as a sketch", "-k", "2")
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert result.exit_code == 0 and all(r[2].startswith("images/set") for r in rows), result.stdout


def _peak_rss_mb(world, batch_file, tmp_path) -> tuple[float, int]:
    """Run `zscir-infer query --batch` in a fresh process; its peak RSS (MB) and the JSON lines it printed.

    The peak is VmHWM of the child's own address space: getrusage's ru_maxrss would carry over the
    high-water mark of this (forking) pytest process across exec."""
    import subprocess
    import sys

    script = ("import re, sys; from zscir_infer.cli import app\n"
              "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
              "print('peak', hwm, file=sys.stderr)\n"
              "sys.exit(code)\n")
    out = tmp_path / f"{batch_file.stem}.out"
    with open(out, "w") as stdout:
        proc = subprocess.run([sys.executable, "-c", script, "query", "--batch", str(batch_file), "--bundle",
                               str(world["bundle"]), "--gallery", str(world["gallery"]), "-k", "5", "--json"],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(proc.stderr.rsplit("peak", 1)[1].split()[0])
    return peak_kb / 1024, sum(1 for _ in open(out))


@pytest.mark.slow
def test_a_batch_of_10000_queries_completes_in_flat_memory(world, tmp_path):
    """Ten times the queries must not need noticeably more memory: queries are encoded, searched and written
    a chunk at a time."""
    texts = ["make it red", "as a sketch", "", "🎉 two of them $", "x " * 100]
    def batch(n):
        path = tmp_path / f"q{n}.jsonl"
        path.write_text("".join(json.dumps({"reference": world["names"][i % len(world["names"])],
                                            "text": texts[i % len(texts)]}) + "\n" for i in range(n)))
        return path
    small_mb, small_lines = _peak_rss_mb(world, batch(1000), tmp_path)
    large_mb, large_lines = _peak_rss_mb(world, batch(10_000), tmp_path)
    print(f"peak RSS: 1,000 queries {small_mb:.0f} MB, 10,000 queries {large_mb:.0f} MB")
    assert (small_lines, large_lines) == (1000, 10_000)
    # measured 178 -> 184 MB; with all 10,000 queries held at once (no chunking) 178 -> 202 MB
    assert large_mb < small_mb + FLAT_MEMORY_MB


def test_hostile_texts_are_encoded_or_warned_about(world):
    rt = world["runtime"]
    image = world["paths"][0]
    hostile = ["", "   \t\n ", "\x00\x1b[31mred\x1b[0m\x7f", "🎉🐱👨‍👩‍👧 café &amp; <b>bold</b>", "$ and * and $$"]
    for method in ("phi", "slerp", "average"):
        q = rt.encode_queries([(image, t) for t in hostile], method=method)
        assert np.isfinite(q).all() and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    from zscir_infer.runtime import PlaceholderLostWarning, TruncationWarning

    long_text = "make it much much bigger " * 20
    with pytest.warns(TruncationWarning, match="longer than 77"):
        ids = rt.token_ids([long_text])
    assert ids[0, -1] == 49407  # the end-of-text token survives the cut
    with pytest.warns(PlaceholderLostWarning, match="lost its placeholder"):
        rt.encode_queries([(image, long_text)], template="{caption} $")


def test_a_contact_sheet_of_a_large_batch_draws_the_first_queries(world, tmp_path):
    from zscir_infer.cli import MAX_SHEET_ROWS

    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"reference": world["names"][i % 10], "text": "as a sketch"}) + "\n"
                            for i in range(MAX_SHEET_ROWS + 7)))
    sheet = tmp_path / "sheet.html"
    result = runner.invoke(app, ["query", "--batch", str(path), "--bundle", str(world["bundle"]), "--gallery",
                                 str(world["gallery"]), "-k", "3", "--show", str(sheet)])
    assert result.exit_code == 0, result.output
    assert f"the first {MAX_SHEET_ROWS} of {MAX_SHEET_ROWS + 7} queries" in " ".join(result.stderr.split())
    assert sheet.read_text().count("as a sketch") >= MAX_SHEET_ROWS


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not an image Pillow can decode"),
    (b"plain text, not a picture\n", "not an image Pillow can decode"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02", "Truncated"),
])
def test_a_bad_reference_image_is_one_clear_error(world, tmp_path, content, message):
    bad = tmp_path / "ref photo é.png"
    bad.write_bytes(content)
    result = invoke_query(world, str(bad), "as a sketch")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert message in text and "ref photo é.png" in text and "Traceback" not in text
