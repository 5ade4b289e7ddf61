"""TAT: LoRA on the image encoder, merged into plain open_clip weights that load_backbone reads."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from zscir_train.backbone import load_backbone
from zscir_train.training.lora import add_lora, merged_state_dict
from zscir_train.training.tat import TATConfig, train_tat


def test_merged_weights_equal_the_adapted_layers():
    torch.manual_seed(0)
    block = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, batch_first=True), "fc": nn.Linear(16, 32)})
    assert add_lora(block, rank=4, alpha=8.0, dropout=0.1) == 3  # in_proj, out_proj, fc
    for name, p in block.named_parameters():
        if p.requires_grad and name.endswith(".B"):
            nn.init.normal_(p)  # as if trained (B starts at zero)
    block.eval()
    x = torch.randn(2, 5, 16)
    adapted = (block["attn"](x, x, x, need_weights=False)[0], block["fc"](x))
    plain = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4, batch_first=True), "fc": nn.Linear(16, 32)}).eval()
    plain.load_state_dict(merged_state_dict(block))  # strict: original key names, no LoRA tensors
    merged = (plain["attn"](x, x, x, need_weights=False)[0], plain["fc"](x))
    for a, m in zip(adapted, merged, strict=True):
        torch.testing.assert_close(a, m, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(torch.nn.functional.linear(x, block["fc"].weight, block["fc"].bias), merged[1])


def test_tat_checkpoint_loads_as_the_tuned_backbone(train_world, train_options, tiny_weights, tmp_path):
    out = tmp_path / "tat.safetensors"
    summary = train_tat(TATConfig(pairs=[str(train_world / "train" / "pairs.jsonl")], out=str(out),
                                  **{**train_options, "steps": 12, "lr": 3e-3, "warmup_steps": 0}))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "tat-run" / "log.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert sum(losses[-3:]) < sum(losses[:3])  # contrastive loss goes down
    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["zscir"])
    assert meta["format"] == "zscir-tat" and meta["base"] == "zscir-tiny"
    assert meta["lora"]["rank"] == 16 and meta["lora"]["alpha"] == 16.0 and meta["lora"]["dropout"] == 0.1
    base = load_backbone("zscir-tiny", str(tiny_weights))
    tuned = load_backbone("zscir-tiny", str(out))  # open_clip's own loader, strict
    pixels = torch.randn(4, 3, 32, 32)
    ids = base.tokenizer(["a red star", "a blue circle on white", "make it green", "as a sketch"])
    with torch.no_grad():
        torch.testing.assert_close(tuned.model.encode_text(ids), base.model.encode_text(ids))  # text frozen
        moved = (tuned.model.encode_image(pixels) - base.model.encode_image(pixels)).abs().max().item()
    assert moved > 1e-3, "the tuned image encoder equals the base one"
    assert summary["steps"] == 12


def test_tat_reproduces_the_live_lora_encoder(train_world, train_options, tiny_weights, tmp_path):
    from zscir_train.training.loop import Dist
    from zscir_train.training.tat import tat_task

    cfg = TATConfig(pairs=[str(train_world / "train" / "pairs.jsonl")], out=str(tmp_path / "t.safetensors"),
                    **train_options)
    task = tat_task(cfg, Dist())
    for name, p in task.module.named_parameters():
        if p.requires_grad and name.endswith(".B"):
            nn.init.normal_(p, std=0.05)
    task.save(tmp_path / "t.safetensors", {"step": 0})
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        live = task.module.eval()(pixels)
        loaded = load_backbone("zscir-tiny", str(tmp_path / "t.safetensors")).model.encode_image(pixels)
    torch.testing.assert_close(loaded, live, atol=1e-5, rtol=1e-4)


def test_tat_refuses_an_out_path_open_clip_cannot_read(train_world, train_options, tmp_path):
    from zscir_train.training.loop import ConfigError

    with pytest.raises(ConfigError, match="safetensors"):
        train_tat(TATConfig(pairs=[str(train_world / "train" / "pairs.jsonl")], out=str(tmp_path / "tat.pt"),
                            **train_options))
