"""The bundle as files: manifest and schema, sha256 of every file, tokenizer, golden files, atomic writes,
one error for all validation failures, external data above 2 GiB."""


import json
import os
import stat
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer
from zscir_export import bundle as bundle_module
from zscir_export import graphs, validate
from zscir_export.bundle import ExportOptions, check_manifest, export_bundle
from zscir_export.model_source import resolve_source
from zscir_export.validate import Tolerance, ValidationError

from zscir_infer import load_bundle
from zscir_infer.contract import manifest_schema_path, sha256_file
from zscir_infer.tokenizer import ClipTokenizer

REPO = Path(__file__).resolve().parents[1]


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def listed_files(bundle: Path) -> dict[str, str]:
    """Every file the manifest (and golden.json) names, with its recorded sha256."""
    m = manifest(bundle)
    files = {m["tokenizer"]["file"]: m["tokenizer"]["sha256"], m["golden"]["file"]: m["golden"]["sha256"]}
    for variants in m["graphs"].values():
        for g in variants.values():
            files[g["file"]] = g["sha256"]
            files.update({e["file"]: e["sha256"] for e in g.get("external_data", [])})
    golden_dir = Path(m["golden"]["file"]).parent
    golden = json.loads((bundle / m["golden"]["file"]).read_text())
    files.update({(golden_dir / name).as_posix(): h for name, h in golden["sha256"].items()})
    return files


def test_the_one_schema_file_is_valid_and_every_bundle_validates(tiny_bundle, tiny_slerp_bundle,
                                                                    tiny_pic2word_bundle):
    schemas = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("**/manifest.schema.json")
                     if ".venv" not in p.parts)
    assert schemas == ["zscir_infer/manifest.schema.json"]  # one schema, shipped with the runtime
    jsonschema.Draft202012Validator.check_schema(json.loads(manifest_schema_path().read_text()))
    for b in (tiny_bundle, tiny_slerp_bundle, tiny_pic2word_bundle):
        check_manifest(manifest(b))
        load_bundle(b).verify_all()
    broken = manifest(tiny_bundle)
    broken["graphs"]["text_encoder"]["fp32"]["inputs"][0]["dtype"] = "int16"
    with pytest.raises(jsonschema.ValidationError, match="int16"):
        check_manifest(broken)


def test_every_file_is_listed_with_its_sha256_and_nothing_else_is_there(tiny_bundle):
    files = listed_files(tiny_bundle)
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {"manifest.json"}
    for name, recorded in files.items():
        assert sha256_file(tiny_bundle / name) == recorded, name


def test_manifest_fields_per_method(tiny_bundle, tiny_slerp_bundle, tiny_pic2word_bundle):
    lincir, slerp, pic2word = manifest(tiny_bundle), manifest(tiny_slerp_bundle), manifest(tiny_pic2word_bundle)
    assert lincir["method"] == "lincir" and lincir["placeholder"] == {"text": "$", "id": 259, "policy": "all"}
    assert lincir["templates"]["default"] == "a photo of $ that {caption}"
    assert set(lincir["graphs"]) == {"image_encoder", "query_encoder", "text_encoder"}
    assert set(lincir["graphs"]["query_encoder"]) == {"fp32", "fp16", "int8"}
    assert lincir["backbone"]["pretrained"] == "zscir-tiny.safetensors"  # a file by name, never a machine path
    assert lincir["source"]["kind"] == "zscir" and lincir["phi"]["kind"] == "lincir"
    assert slerp["method"] == "slerp" and slerp["placeholder"] is None and "query_encoder" not in slerp["graphs"]
    assert pic2word["placeholder"] == {"text": "*", "id": 265, "policy": "first"}  # as Pic2Word's own code
    assert pic2word["source"]["kind"] == "official-pic2word" and pic2word["phi"]["l2_normalize"] is False
    assert lincir["phi"]["l2_normalize"] is False  # LinCIR's default
    assert {m["backbone"]["activation"] for m in (lincir, slerp, pic2word)} == {"gelu"}  # zscir-tiny's config
    assert lincir["preprocess"] == {"image_size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                                    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                                    "resize_mode": "shortest", "fill_color": 0, "crop": "center"}
    for m in (lincir, slerp, pic2word):
        for variants in m["graphs"].values():
            for precision, g in variants.items():
                assert g["precision"] == precision and all(c["min_cosine"] >= validate.TOLERANCES[precision].min_cosine
                                                           for c in g["validation"].values())


def test_the_tokenizer_gives_open_clips_ids(tiny_bundle):
    entry = manifest(tiny_bundle)["tokenizer"]
    assert (entry["sot_id"], entry["eot_id"], entry["pad_id"], entry["context_length"]) == (49406, 49407, 0, 77)
    tokenizer = ClipTokenizer.from_file(tiny_bundle / entry["file"])
    reference = SimpleTokenizer()
    texts = list(validate.TEXT_PROMPTS) + list(validate.QUERY_CAPTIONS) + ["a photo of $ that {caption}", "* , x"]
    want = np.stack([reference([t])[0].numpy() for t in texts])
    np.testing.assert_array_equal(tokenizer(texts), want)


def test_golden_methods_cover_the_bundle(tiny_bundle, tiny_slerp_bundle):
    for b, methods in ((tiny_bundle, {"phi", "slerp", "image", "text", "average", "sum"}),
                       (tiny_slerp_bundle, {"slerp", "image", "text", "average", "sum"})):
        golden = json.loads((b / "golden" / "golden.json").read_text())
        assert set(golden["methods"]) == methods
        assert len(golden["images"]) == len(golden["texts"]) >= 4
        for f in golden["methods"].values():
            q = np.load(b / "golden" / f)
            np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_source(tiny_lincir_ckpt):
    return resolve_source(tiny_lincir_ckpt)


def test_all_validation_failures_are_reported_together_and_no_bundle_is_left(tiny_source, tmp_path, monkeypatch):
    impossible = {p: Tolerance(1.1, None) for p in validate.TOLERANCES}
    monkeypatch.setattr(validate, "TOLERANCES", impossible)
    out = tmp_path / "bundle"
    with pytest.raises(ValidationError) as info:
        export_bundle(tiny_source, ExportOptions(out, fp16=True))
    failures = {(f.graph, f.precision) for f in info.value.failures}
    assert failures == {(g, p) for g in ("image_encoder", "query_encoder", "text_encoder") for p in ("fp32", "fp16")}
    assert "needs cosine >= 1.1" in str(info.value) and "min cosine" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary directory


def test_an_encoder_computing_another_activation_than_the_backbone_fails_validation(tiny_source, tmp_path):
    """The manifest's backbone.activation is checked against the exported graphs (QuickGELU: Sigmoid, GELU: Erf)."""
    import dataclasses

    wrong = dataclasses.replace(tiny_source, backbone=dataclasses.replace(tiny_source.backbone, activation="quick_gelu"))
    with pytest.raises(ValidationError) as info:
        export_bundle(wrong, ExportOptions(tmp_path / "bundle"))
    assert {f.graph for f in info.value.failures} == {"image_encoder", "text_encoder"}
    assert "computes gelu but the backbone is built with quick_gelu" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_export_keeps_the_previous_bundle(tiny_source, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    export_bundle(tiny_source, ExportOptions(out))
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module, "write_golden", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_source, ExportOptions(out, fp16=True, force=True))
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(tiny_source, ExportOptions(out))


def test_graphs_above_the_protobuf_limit_keep_their_weights_beside_them(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "PROTOBUF_LIMIT", 0)  # every graph counts as "over 2 GiB"
    out = tmp_path / "bundle"
    export_bundle(tiny_source, ExportOptions(out, fp16=True, int8=True))
    m = manifest(out)
    for variants in m["graphs"].values():
        for precision, g in variants.items():
            (data,) = g["external_data"]
            assert data["file"] == g["file"] + ".data" and (out / data["file"]).stat().st_size > 10_000, precision
            assert (out / g["file"]).stat().st_size < 500_000
    assert set(listed_files(out)) | {"manifest.json"} == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                                          if p.is_file()}
    load_bundle(out).verify_all()


def test_the_published_bundle_has_the_usual_modes_not_private_temp_ones(tiny_bundle):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(tiny_bundle.stat().st_mode) == 0o777 & ~umask
    for p in tiny_bundle.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o777 if p.is_dir() else 0o666) & ~umask, p


@pytest.mark.parametrize(("ops", "expected", "passed"), [
    (["MatMul", "Relu"], "gelu", True),  # a ResNet tower (world-clip's): no GELU-family op, nothing to check
    (["MatMul", "Erf"], "gelu", True),
    (["MatMul", "Sigmoid"], "gelu", False),
    (["Sigmoid", "Erf"], "quick_gelu", False),  # both: ambiguous, refused
])
def test_the_activation_check_reads_the_graphs_ops(tmp_path, ops, expected, passed):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node(op, ["x" if i == 0 else f"y{i - 1}"] + (["x"] if op == "MatMul" else []), [f"y{i}"])
             for i, op in enumerate(ops)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info(f"y{len(ops) - 1}", TensorProto.FLOAT, [2, 2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    [check] = validate.check_activation(graphs.GraphSpec("image_encoder", None, (), (), False), tmp_path / "g.onnx",
                                        expected)
    assert check.passed is passed
