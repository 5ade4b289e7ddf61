"""TAT: LoRA on the image encoder, merged into plain open_clip weights that load_backbone reads."""

import json

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d
from safetensors import safe_open
from torch import nn

from zscir_train.backbone import load_backbone
from zscir_train.training.lora import add_lora, merged_state_dict
from zscir_train.training.tat import TATConfig, train_tat


class Block(nn.Module):
    """Both kinds of linear: MultiheadAttention reads its projections, the MLP calls its Linear."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def train_b(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        if p.requires_grad and name.endswith(".B"):
            nn.init.normal_(p)  # as if trained (B starts at zero)


@pytest.mark.parametrize("make", [Block, lambda: AttentionPool2d(2, 16, 4, 8)], ids=["vit-block", "resnet-attnpool"])
def test_merged_weights_equal_the_adapted_layers(make):
    torch.manual_seed(0)
    example = torch.randn(2, 5, 16) if make is Block else torch.randn(2, 16, 2, 2)
    adapted, plain = make(), make()
    plain.load_state_dict(adapted.state_dict())
    base = plain(example).detach()
    count = add_lora(adapted, example[:1], rank=4, alpha=8.0, dropout=0.1)
    assert count == (3 if make is Block else 4)  # in_proj, out_proj, fc | q, k, v, c_proj
    adapted.train()
    adapted(example).sum().backward()  # every adapter is on the computation path
    assert all(p.grad is not None for n, p in adapted.named_parameters() if n.endswith(".A") or n.endswith(".B"))
    train_b(adapted)
    adapted.eval()
    with torch.no_grad():
        live = adapted(example)
        plain.load_state_dict(merged_state_dict(adapted))  # strict: original key names, no LoRA tensors
        torch.testing.assert_close(plain(example), live, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(live, base, atol=1e-3)  # the deltas are really there


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
    from zscir_train.training.distributed import Dist
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
    from zscir_train.training.config import ConfigError

    with pytest.raises(ConfigError, match="safetensors"):
        train_tat(TATConfig(pairs=[str(train_world / "train" / "pairs.jsonl")], out=str(tmp_path / "tat.pt"),
                            **train_options))
