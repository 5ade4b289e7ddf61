"""The tiny shapes-world CLIP: training pieces, resumable training, and the committed weights."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from zscir_train.backbone import load_backbone
from zscir_train.world import WORLD_CLIP_DIR, WORLD_CLIP_ZERO_SHOT, world_clip_path
from zscir_train.world.attributes import ATTRIBUTES, all_specs
from zscir_train.world.captions import matches, random_caption
from zscir_train.world.clip_train import (
    WorldClipConfig,
    create_world_clip,
    encode_text_prefix,
    multi_positive_loss,
    positive_matrix,
    train_world_clip,
)
from zscir_train.world.generate import WorldConfig, render_image, split_specs
from zscir_train.world.zeroshot import to_pixels, zero_shot_table

MAX_WEIGHTS_BYTES = 16 * 1024 * 1024
ZERO_SHOT_TOLERANCE = 0.005  # argmax flips from float differences across CPUs
MIN_ZERO_SHOT = 0.90


@pytest.fixture(scope="module")
def world_clip():
    return load_backbone("world-clip", str(world_clip_path()))


def test_prefix_text_encoding_equals_the_full_77_token_pass():
    torch.manual_seed(0)
    model = create_world_clip().eval()
    tokenizer = open_clip.get_tokenizer("world-clip")
    ids = tokenizer(["a star", "a picture of a tile mosaic of a blue heart that is large with a dark background"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_prefix(model, ids), model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_fast_pixels_equal_the_open_clip_eval_transform(world_clip):
    config = WorldConfig()
    images = [render_image(config, "test", i, s) for i, s in enumerate(split_specs(config, "test")[:4])]
    expected = torch.stack([world_clip.transform(im) for im in images])
    torch.testing.assert_close(to_pixels(images), expected, atol=1e-6, rtol=0)


def test_positive_matrix_agrees_with_caption_matching():
    rng = np.random.default_rng(0)
    specs = [all_specs()[int(i)] for i in rng.integers(len(all_specs()), size=24)]
    specs += [s.with_values(color="red") for s in specs[:8]]  # near duplicates
    mentions = [random_caption(rng, s)[1] for s in specs]
    expected = [[matches(a, specs[j], mentions[j]) for j in range(len(specs))] for a in specs]
    assert positive_matrix(specs, mentions).tolist() == expected


def test_multi_positive_loss_reduces_to_clip_loss_with_one_positive_each():
    logits = torch.randn(6, 6)
    clip_loss = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(multi_positive_loss(logits, torch.eye(6, dtype=torch.bool)), clip_loss)
    both = torch.eye(6, dtype=torch.bool)
    both[0, 1] = both[1, 0] = True
    assert multi_positive_loss(logits, both) != multi_positive_loss(logits, torch.eye(6, dtype=torch.bool))


def test_training_writes_loadable_weights_and_resumes(tmp_path):
    config = WorldClipConfig(steps=2, batch_size=16, warmup_steps=1, checkpoint_every=1, eval_every=100)
    run, weights = tmp_path / "run", tmp_path / "w.safetensors"
    train_world_clip(config, run, weights)
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    with pytest.raises(ValueError, match="other training options"):
        train_world_clip(WorldClipConfig(steps=3, batch_size=8), run, weights)
    config_more = WorldClipConfig(steps=3, batch_size=16, warmup_steps=1, checkpoint_every=1, eval_every=100)
    with pytest.raises(ValueError, match="steps"):
        train_world_clip(config_more, run, weights)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [1, 2]
    assert "zero_shot" in log[-1]  # the last step is always evaluated
    backbone = load_backbone("world-clip", str(weights))
    saved = load_file(weights)
    assert saved.keys() == backbone.model.state_dict().keys()
    assert all(t.dtype == torch.float16 for t in saved.values())


def test_committed_weights_are_small_and_complete(world_clip):
    path = world_clip_path()
    assert path.stat().st_size <= MAX_WEIGHTS_BYTES
    assert load_file(path).keys() == world_clip.model.state_dict().keys()
    assert world_clip.context_length == 77 and world_clip.model.token_embedding.num_embeddings == 49408


def test_committed_weights_reproduce_the_recorded_zero_shot_table(world_clip):
    recorded = json.loads((WORLD_CLIP_DIR / WORLD_CLIP_ZERO_SHOT).read_text())
    table = zero_shot_table(world_clip, WorldConfig(seed=recorded["world_seed"]), recorded["images"])
    for attribute in ATTRIBUTES:
        accuracy = table["attributes"][attribute]["accuracy"]
        assert accuracy == pytest.approx(recorded["attributes"][attribute]["accuracy"], abs=ZERO_SHOT_TOLERANCE)
        assert accuracy >= MIN_ZERO_SHOT, (attribute, accuracy)
