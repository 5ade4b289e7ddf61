"""FLOP counting against a hand count and against PyTorch's own counter; the GEMM peak's bookkeeping."""

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from zscir_bench import roofline

from zscir_train.phi import build_phi

TINY = {  # zscir-tiny: 32 px, patch 8, ViT width 64 x 2 layers; text width 80 x 2 layers; D 48
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 80, "heads": 4, "layers": 2},
}


def test_image_flops_match_a_hand_count():
    patches, tokens, w = 16, 17, 64  # (32 / 8)^2 patches + the class token
    per_layer = tokens * w * 3 * w + 2 * tokens * tokens * w + tokens * w * w + 2 * tokens * w * 4 * w
    macs = 2 * per_layer + patches * (3 * 8 * 8) * w + w * 48
    assert roofline.image_flops(TINY) == 2 * macs == 3_889_664


def test_text_flops_match_a_hand_count():
    tokens, w = 77, 80
    per_layer = tokens * w * 3 * w + 2 * tokens * tokens * w + tokens * w * w + 2 * tokens * w * 4 * w
    assert roofline.text_flops(TINY) == 2 * (2 * per_layer + w * 48)


def test_vit_b_32_is_the_known_8_8_gflop():
    import open_clip

    assert roofline.image_flops(open_clip.get_model_config("ViT-B-32")) / 1e9 == pytest.approx(8.82, abs=0.01)


def _pytorch_flops(backbone, image: bool) -> float:
    """FLOPs PyTorch counts per item; attention on the math path, so every matmul is a counted op."""
    size = backbone.preprocess.image_size
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            if image:
                backbone.model.encode_image(torch.zeros(2, 3, size, size))
            else:
                backbone.model.encode_text(torch.zeros(2, 77, dtype=torch.long))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return counter.get_total_flops() / 2


def test_counts_equal_pytorch_flop_counter_on_the_real_model(tiny_backbone):
    arch = {**tiny_backbone.arch, "embed_dim": tiny_backbone.embed_dim}
    assert roofline.image_flops(arch) == _pytorch_flops(tiny_backbone, image=True)
    assert roofline.text_flops(arch) == _pytorch_flops(tiny_backbone, image=False)


def test_world_clip_text_is_counted_and_its_resnet_image_tower_refused():
    from zscir_train.backbone import load_backbone

    backbone = load_backbone("world-clip")
    arch = {**backbone.arch, "embed_dim": backbone.embed_dim}
    assert roofline.text_flops(arch) == _pytorch_flops(backbone, image=False)
    with pytest.raises(roofline.UnsupportedArchitecture, match="ResNet"):
        roofline.image_flops(arch)


@pytest.mark.parametrize("kind", ["lincir", "pic2word"])
def test_phi_flops_equal_pytorch_flop_counter(kind):
    phi = build_phi(kind, 48, 80)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        phi(torch.zeros(1, 48))
    assert roofline.phi_flops(phi.embed_dim, phi.width, phi.hidden_dim) == counter.get_total_flops()


def test_query_flops_are_text_plus_phi():
    assert roofline.query_flops(TINY, (48, 80, 192)) == roofline.text_flops(TINY) + roofline.phi_flops(48, 80, 192)
    assert roofline.query_flops(TINY, None) == roofline.text_flops(TINY)


def test_towers_the_counter_does_not_know_are_refused():
    resnet = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "layers": [3, 4, 6, 3]}}
    with pytest.raises(roofline.UnsupportedArchitecture, match="ResNet"):
        roofline.image_flops(resnet)
    hf_text = {**TINY, "text_cfg": {**TINY["text_cfg"], "hf_model_name": "xlm-roberta-base"}}
    with pytest.raises(roofline.UnsupportedArchitecture, match="hf_model_name"):
        roofline.text_flops(hf_text)


def test_the_numpy_child_runs_without_the_openblas_overrides_and_the_parent_keeps_them():
    parent = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "PATH": "/bin"}
    child = roofline.gemm_child_env(parent, threads=2)
    assert "OPENBLAS_CORETYPE" not in child and "OPENBLAS_L2_SIZE" not in child
    assert child["PATH"] == "/bin" and child["OPENBLAS_NUM_THREADS"] == child["OMP_NUM_THREADS"] == "2"
    assert parent["OPENBLAS_CORETYPE"] == "Haswell"


def test_gflops_are_two_n_cubed_over_the_time():
    best, median = roofline._gflops(1000, [0.02, 0.01, 0.04])
    assert best == pytest.approx(2e9 / 0.01 / 1e9)
    assert median == pytest.approx(2e9 / 0.02 / 1e9)


def test_ort_gemm_computes_a_real_product():
    """The peak's graph multiplies (checked on ONNX Runtime's output), so the FLOPs it claims are done."""
    import onnxruntime as ort

    n = 8
    session = ort.InferenceSession(roofline._matmul_model(n, integer=False), providers=["CPUExecutionProvider"])
    a, b = np.random.default_rng(0).standard_normal((2, n, n), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"a": a, "b": b})[0], a @ b, rtol=1e-5, atol=1e-5)
    result = roofline.ort_gemm(n=64, reps=2, threads=1, integer=True)
    assert result.name == "ort-matmulinteger-int8" and result.best_gflops >= result.median_gflops > 0


def test_roofline_entry_divides_achieved_by_peak():
    entry = roofline.roofline_entry(flops_per_item=2_000_000_000, items_per_s=50.0, peak_gflops=400.0)
    assert entry["achieved_gflops"] == pytest.approx(100.0)
    assert entry["percent_of_peak"] == pytest.approx(25.0)
