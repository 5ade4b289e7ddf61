"""The exported graphs against PyTorch: signatures, the causal mask, EOT pooling, the placeholder
substitution, the dynamic batch, and the runtime-independent check on the golden inputs."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from zscir_export.validate import ort_session, row_cosines

from zscir_train.checkpoint import load_phi_checkpoint
from zscir_train.composed import ComposedQueryEncoder, encode_text_with_pseudo

FP32_ABS = 1e-5  # ORT vs PyTorch fp32 on this tiny model: measured ~2e-6
EOT, SOT = 49407, 49406


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def golden_graph(bundle: Path, graph: str) -> tuple[dict, dict]:
    base = bundle / "golden"
    entry = json.loads((base / "golden.json").read_text())["graphs"][graph]
    load = lambda files: {n: np.load(base / f) for n, f in files.items()}  # noqa: E731
    return load(entry["inputs"]), load(entry["outputs"])


def run(bundle: Path, graph: str, feeds: dict, precision: str = "fp32") -> np.ndarray:
    entry = manifest(bundle)["graphs"][graph][precision]
    return ort_session(bundle / entry["file"], precision).run(None, feeds)[0]


def test_graph_signatures_follow_the_bundle_contract(tiny_bundle):
    m = manifest(tiny_bundle)
    d, size = m["embed_dim"], m["preprocess"]["image_size"]
    expected = {
        "image_encoder": ([("pixels", "float32", ["batch", 3, size, size])], [("image_features", "float32", ["batch", d])]),
        "query_encoder": ([("image_features", "float32", ["batch", d]), ("token_ids", "int32", ["batch", "sequence"])],
                          [("query_features", "float32", ["batch", d])]),
        "text_encoder": ([("token_ids", "int32", ["batch", "sequence"])], [("text_features", "float32", ["batch", d])]),
    }
    assert m["text"] == {"causal": True, "pooling": "eot_argmax"}  # a CLIP text tower: ids may be cut after EOT
    onnx_type = {"float32": onnx.TensorProto.FLOAT, "int32": onnx.TensorProto.INT32}
    for graph, (inputs, outputs) in expected.items():
        for precision, entry in m["graphs"][graph].items():
            assert [(t["name"], t["dtype"], t["shape"]) for t in entry["inputs"]] == inputs
            assert [(t["name"], t["dtype"], t["shape"]) for t in entry["outputs"]] == outputs
            model = onnx.load(str(tiny_bundle / entry["file"]), load_external_data=False)
            assert entry["opset"] >= 17 and model.opset_import[0].version == entry["opset"]
            for value, (name, dtype, shape) in zip([*model.graph.input, *model.graph.output], inputs + outputs,
                                                   strict=True):
                dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
                assert (value.name, value.type.tensor_type.elem_type, dims) == (name, onnx_type[dtype], shape), precision


def test_the_onnx_query_encoder_equals_the_pytorch_reference_on_the_golden_inputs(tiny_bundle, tiny_lincir_ckpt):
    """Runtime-independent: the graph in ONNX Runtime, and a fresh PyTorch reference, reproduce the golden outputs."""
    inputs, outputs = golden_graph(tiny_bundle, "query_encoder")
    assert (inputs["token_ids"] == 259).sum(1).max() >= 2  # a prompt with the placeholder several times
    onnx_out = run(tiny_bundle, "query_encoder", inputs)
    np.testing.assert_allclose(onnx_out, outputs["query_features"], rtol=0, atol=FP32_ABS)
    from zscir_export.model_source import resolve_source

    source = resolve_source(tiny_lincir_ckpt)
    phi, _ = load_phi_checkpoint(tiny_lincir_ckpt, source.backbone)
    reference = ComposedQueryEncoder(source.backbone.model, phi, 259).eval()
    with torch.no_grad():
        fresh = reference(torch.from_numpy(inputs["image_features"]), torch.from_numpy(inputs["token_ids"]).long())
    np.testing.assert_allclose(fresh.numpy(), outputs["query_features"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("graph", ["image_encoder", "query_encoder", "text_encoder"])
def test_every_graph_reproduces_its_golden_outputs(tiny_bundle, graph):
    inputs, outputs = golden_graph(tiny_bundle, graph)
    np.testing.assert_allclose(run(tiny_bundle, graph, inputs), next(iter(outputs.values())), rtol=0, atol=FP32_ABS)


def test_tokens_after_the_end_of_text_cannot_change_the_features(tiny_bundle):
    """The causal mask is in the graph: what follows EOT (padding, or junk) never reaches the EOT position."""
    inputs, _ = golden_graph(tiny_bundle, "text_encoder")
    ids = inputs["token_ids"]
    junk = ids.copy()
    for row in junk:
        eot = int(np.argmax(row))
        row[eot + 1:] = np.arange(len(row) - eot - 1) % 40000 + 1000  # non-zero ids, all below EOT
    clean, dirty = run(tiny_bundle, "text_encoder", {"token_ids": ids}), run(tiny_bundle, "text_encoder", {"token_ids": junk})
    np.testing.assert_allclose(dirty, clean, rtol=0, atol=FP32_ABS)


def test_prompts_of_every_length_match_pytorch_and_pool_at_the_first_eot(tiny_bundle, tiny_lincir_ckpt):
    from zscir_export.model_source import resolve_source

    backbone = resolve_source(tiny_lincir_ckpt).backbone
    prompts = ["", "a", "a b c d", " ".join(["word"] * 30), " ".join(["long"] * 120), "first <end_of_text> second"]
    ids = backbone.tokenizer(prompts)
    assert (ids[-1] == EOT).sum() == 2  # a literal end-of-text token: pooling takes the first one
    with torch.no_grad():
        want = encode_text_with_pseudo(backbone.model, ids).numpy()
    got = run(tiny_bundle, "text_encoder", {"token_ids": ids.numpy().astype(np.int32)})
    np.testing.assert_allclose(got, want, rtol=0, atol=FP32_ABS)
    without_mask = backbone.model.attn_mask
    backbone.model.attn_mask = None
    try:
        with torch.no_grad():
            unmasked = encode_text_with_pseudo(backbone.model, ids).numpy()
    finally:
        backbone.model.attn_mask = without_mask
    assert np.abs(unmasked - got).max() > 100 * FP32_ABS  # the check above would catch a lost mask


def test_the_image_token_reaches_the_query_only_through_the_placeholder(tiny_bundle):
    inputs, _ = golden_graph(tiny_bundle, "query_encoder")
    m = manifest(tiny_bundle)
    d = m["embed_dim"]
    ids = inputs["token_ids"][:2].copy()
    features = np.random.default_rng(0).standard_normal((2, d)).astype(np.float32)
    a = run(tiny_bundle, "query_encoder", {"image_features": features, "token_ids": ids})
    b = run(tiny_bundle, "query_encoder", {"image_features": features[::-1].copy(), "token_ids": ids})
    assert np.abs(a - b).max() > 1e-3  # with the placeholder, the image matters
    no_placeholder = np.where(ids == m["placeholder"]["id"], 320, ids).astype(np.int32)  # 320: "a</w>"
    c = run(tiny_bundle, "query_encoder", {"image_features": features, "token_ids": no_placeholder})
    e = run(tiny_bundle, "query_encoder", {"image_features": features[::-1].copy(), "token_ids": no_placeholder})
    np.testing.assert_allclose(c, e, rtol=0, atol=FP32_ABS)  # without it, it cannot
    text = run(tiny_bundle, "text_encoder", {"token_ids": no_placeholder})
    np.testing.assert_allclose(c, text / np.linalg.norm(text, axis=1, keepdims=True), rtol=0, atol=FP32_ABS)


@pytest.mark.parametrize("graph", ["image_encoder", "query_encoder", "text_encoder"])
def test_rows_do_not_depend_on_the_batch_size(tiny_bundle, graph):
    inputs, outputs = golden_graph(tiny_bundle, graph)
    n = len(next(iter(inputs.values())))
    big = {k: np.concatenate([v] * 3) for k, v in inputs.items()}  # a batch never seen at export
    rows = [run(tiny_bundle, graph, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
    np.testing.assert_allclose(np.concatenate(rows), next(iter(outputs.values())), rtol=0, atol=FP32_ABS)
    np.testing.assert_allclose(run(tiny_bundle, graph, big), np.concatenate([np.concatenate(rows)] * 3),
                               rtol=0, atol=FP32_ABS)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_text_and_query_graphs_take_ids_of_every_length_up_to_the_context(tiny_bundle, precision):
    """Sequence-adaptive graphs: ids cut anywhere after the batch's last EOT give the full-length features."""
    m = manifest(tiny_bundle)
    for graph in ("text_encoder", "query_encoder"):
        inputs, _ = golden_graph(tiny_bundle, graph)
        keep = inputs["token_ids"].argmax(1) < 20  # rows whose EOT is early enough to cut a lot
        inputs = {k: v[keep] for k, v in inputs.items()}
        full = run(tiny_bundle, graph, inputs, precision)
        need = int(inputs["token_ids"].argmax(1).max()) + 1
        for length in range(need, m["context_length"] + 1):
            cut = {**inputs, "token_ids": np.ascontiguousarray(inputs["token_ids"][:, :length])}
            got = run(tiny_bundle, graph, cut, precision)
            if precision == "int8":  # dynamic quantization ranges span the positions fed: close, not equal
                assert row_cosines(got, full).min() >= 0.99, (graph, length)
            else:
                np.testing.assert_allclose(got, full, rtol=0, atol=FP32_ABS if precision == "fp32" else 1e-2,
                                           err_msg=f"{graph} {precision} L={length}")


def test_the_pytorch_reference_slices_the_positions_and_the_mask_to_the_ids(tiny_backbone):
    from zscir_train.composed import is_causal_text_tower

    ids = tiny_backbone.tokenizer(["a", "a photo of a red circle", " ".join(["word"] * 30)])
    eot = int(ids.argmax(1).max())
    with torch.no_grad():
        full = encode_text_with_pseudo(tiny_backbone.model, ids)
        for length in (eot + 1, eot + 5, 77):
            torch.testing.assert_close(encode_text_with_pseudo(tiny_backbone.model, ids[:, :length]), full,
                                       rtol=0, atol=1e-6)
    assert is_causal_text_tower(tiny_backbone.model)


def test_a_text_tower_without_a_causal_mask_keeps_the_full_length(tiny_backbone):
    """SigLIP-like towers (no attn_mask) see every position: fixed [batch, 77] ids and text.causal false."""
    from zscir_export.bundle import text_tower_entry
    from zscir_export.graphs import graph_specs

    causal = {s.name: s for s in graph_specs(tiny_backbone)}
    assert causal["text_encoder"].inputs[0].shape == ("batch", "sequence")
    assert text_tower_entry(tiny_backbone)["causal"] is True
    model, mask = tiny_backbone.model, tiny_backbone.model.attn_mask
    try:
        model.attn_mask = None
        specs = {s.name: s for s in graph_specs(tiny_backbone)}
        assert specs["text_encoder"].inputs[0].shape == ("batch", 77) and not specs["text_encoder"].sequence_adaptive
        assert specs["text_encoder"].dynamic_axes() == {"token_ids": {0: "batch"}, "text_features": {0: "batch"}}
        assert text_tower_entry(tiny_backbone)["causal"] is False
        model.attn_mask = torch.zeros(77, 77)  # a mask, but not a causal one
        assert text_tower_entry(tiny_backbone)["causal"] is False
    finally:
        model.attn_mask = mask
