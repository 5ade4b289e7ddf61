"""The training loop on the tiny model: exact resume, loss going down, validation keeping the best."""

import json

import pytest
import torch

from zscir_train.checkpoint import load_phi_checkpoint
from zscir_train.training.config import ConfigError
from zscir_train.training.lincir import LinCIRConfig, train_lincir
from zscir_train.training.loop import GlobalOrder
from zscir_train.training.pic2word import Pic2WordConfig, train_pic2word

RESUME_TOLERANCE = 1e-6


def lincir_config(train_world, masking_cache, train_options, out, **overrides) -> LinCIRConfig:
    return LinCIRConfig(captions=[str(train_world / "corpus" / "captions.txt")], cache_dir=str(masking_cache),
                        out=str(out), **{**train_options, **overrides})


def pic2word_config(train_world, train_options, out, **overrides) -> Pic2WordConfig:
    return Pic2WordConfig(images=[str(train_world / "train" / "unlabeled.txt")], out=str(out),
                          **{**train_options, "schedule": "constant", "warmup_steps": 0, **overrides})


def log_records(run_dir, event):
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["event"] == event]


def max_weight_diff(a, b) -> float:
    wa, wb = load_phi_checkpoint(a)[0].state_dict(), load_phi_checkpoint(b)[0].state_dict()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_global_order_covers_each_epoch_once_and_ignores_world_size():
    order = GlobalOrder(num_samples=10, global_batch=4, seed=1)
    stream = torch.tensor([int(i) for s in range(5) for i in order.step_indices(s)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert stream[:10].tolist() != stream[10:].tolist()  # a new permutation per epoch


@pytest.mark.parametrize("method", ["lincir", "pic2word"])
def test_ten_steps_equal_five_plus_resume_plus_five(method, train_world, masking_cache, train_options, tmp_path):
    def config(out, **kw):
        if method == "lincir":
            return lincir_config(train_world, masking_cache, train_options, out, **kw)
        return pic2word_config(train_world, train_options, out, **kw)

    train = train_lincir if method == "lincir" else train_pic2word
    straight = tmp_path / "straight.safetensors"
    train(config(straight, steps=10, checkpoint_every=5))  # dropout on: the RNG state must be restored too
    resumed = tmp_path / "resumed.safetensors"
    first = train(config(resumed, steps=5, checkpoint_every=5))
    assert first["steps"] == 5
    with pytest.raises(ConfigError, match="--resume"):  # an existing run is never overwritten silently
        train(config(resumed, steps=10, checkpoint_every=5))
    second = train(config(resumed, steps=10, checkpoint_every=5, resume=True))
    assert second["resumed_from"] == 5
    assert max_weight_diff(straight, resumed) <= RESUME_TOLERANCE
    losses = [r["loss"] for r in log_records(tmp_path / "resumed-run", "train")]
    assert losses == [r["loss"] for r in log_records(tmp_path / "straight-run", "train")]


def test_lincir_loss_decreases_on_the_tiny_model(train_world, masking_cache, train_options, tmp_path):
    summary = train_lincir(lincir_config(train_world, masking_cache, train_options, tmp_path / "phi.pt",
                                         steps=40, batch_size=32, lr=1e-3))
    losses = [r["loss"] for r in log_records(tmp_path / "phi-run", "train")]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert summary["masking"]["keywords"] > 0.9 * len(open(train_world / "corpus" / "captions.txt").readlines())
    phi, meta = load_phi_checkpoint(tmp_path / "phi.pt")  # the extension is the user's: safetensors inside
    assert meta.method == "lincir" and meta.training["config"]["lr"] == 1e-3 and meta.training["step"] == 40


def test_validation_keeps_the_best_checkpoint(train_world, masking_cache, train_options, tmp_path):
    summary = train_lincir(lincir_config(train_world, masking_cache, train_options, tmp_path / "phi.safetensors",
                                         steps=6, val_every=2, val_world=str(train_world), lr=3e-3))
    records = log_records(tmp_path / "phi-run", "val")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all({"cirr/R@1", "cirr/R@10", "circo/mAP@10"} <= set(r["metrics"]) for r in records)
    best = max(records, key=lambda r: (r["value"], -r["step"]))  # the first of equal scores is kept
    assert summary["best"]["step"] == best["step"] and summary["best"]["metric"] == "cirr/R@1"
    out = (tmp_path / "phi.safetensors").read_bytes()
    assert out == (tmp_path / "phi-run" / "best.safetensors").read_bytes()
    assert load_phi_checkpoint(tmp_path / "phi.safetensors")[1].training["step"] == best["step"]
    end = log_records(tmp_path / "phi-run", "end")[0]
    assert end["from"] == "best.safetensors" and end["samples_per_s"] > 0


def test_batch_must_split_over_accumulation(train_world, masking_cache, train_options, tmp_path):
    with pytest.raises(ConfigError, match="not divisible"):
        train_lincir(lincir_config(train_world, masking_cache, train_options, tmp_path / "p.pt",
                                   batch_size=10, grad_accum=4))


def test_gradient_accumulation_matches_one_big_batch(train_world, masking_cache, train_options, tmp_path):
    common = dict(steps=3, phi_dropout=0.0, batch_size=16)
    train_lincir(lincir_config(train_world, masking_cache, train_options, tmp_path / "one.pt", **common))
    train_lincir(lincir_config(train_world, masking_cache, train_options, tmp_path / "four.pt", grad_accum=4, **common))
    assert max_weight_diff(tmp_path / "one.pt", tmp_path / "four.pt") < 1e-5


def test_trimmed_text_path_equals_the_reference(tiny_backbone):
    from zscir_train.composed import encode_text_with_pseudo
    from zscir_train.training.text import encode_text_trimmed

    model = tiny_backbone.model
    ids = tiny_backbone.tokenizer(["a $ that is red", "a photo of $ on a blue background, drawn as a sketch", "$"])
    pseudo = torch.randn(3, tiny_backbone.width)
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, ids, pseudo, 259),
                                   encode_text_with_pseudo(model, ids, pseudo, 259), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encode_text_trimmed(model, ids), model.encode_text(ids), atol=1e-5, rtol=1e-5)
