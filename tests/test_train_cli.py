"""`zscir-train lincir | pic2word | tat` through typer's CliRunner, and the presets."""

import json

import pytest
import typer
from typer.testing import CliRunner

from zscir_train.checkpoint import METADATA_KEY, load_phi_checkpoint
from zscir_train.commands.train import register
from zscir_train.training.config import list_presets, load_preset, resolve_config
from zscir_train.training.lincir import LinCIRConfig
from zscir_train.training.pic2word import Pic2WordConfig
from zscir_train.training.tat import TATConfig

runner = CliRunner()
CONFIGS = {"lincir": LinCIRConfig, "pic2word": Pic2WordConfig, "tat": TATConfig}
PAPER_BACKBONES = {("ViT-L-14", "openai"), ("ViT-H-14", "laion2b_s32b_b79k"), ("ViT-bigG-14", "laion2b_s39b_b160k")}


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def tiny(train_options) -> list[str]:
    return ["--model", "zscir-tiny", "--pretrained", train_options["pretrained"], "--threads", "1", "--no-progress"]


def test_lincir_command_takes_several_sources(app, train_world, train_options, masking_cache, tmp_path):
    corpus = train_world / "corpus" / "captions.txt"
    extra = tmp_path / "extra.tsv"
    extra.write_text("a tiny red star\thttp://example/1.jpg\n")
    out = tmp_path / "lincir.pt"
    result = runner.invoke(app, ["lincir", "--captions", str(corpus), str(extra), *tiny(train_options),
                                 "--out", str(out), "--steps", "3", "--batch-size", "8", "--cache-dir", str(masking_cache)])
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output and str(out) in result.output
    phi, meta = load_phi_checkpoint(out)
    assert meta.method == "lincir" and meta.training["config"]["captions"] == [str(corpus), str(extra)]
    assert meta.training["config"]["lr"] == 1e-4 and meta.training["config"]["weight_decay"] == 0.01


def test_pic2word_and_tat_commands(app, train_world, train_options, tmp_path):
    images = train_world / "train" / "unlabeled.txt"
    result = runner.invoke(app, ["pic2word", "--images", str(images), *tiny(train_options), "--steps", "2",
                                 "--batch-size", "8", "--warmup-steps", "1", "--out", str(tmp_path / "p2w.safetensors")])
    assert result.exit_code == 0, result.output
    phi, meta = load_phi_checkpoint(tmp_path / "p2w.safetensors")
    assert meta.method == "pic2word" and meta.placeholder == "*"
    assert meta.training["config"]["betas"] == [0.9, 0.98] and meta.training["config"]["weight_decay"] == 0.1
    result = runner.invoke(app, ["tat", "--pairs", str(train_world / "train" / "pairs.jsonl"), *tiny(train_options),
                                 "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "tat.safetensors")])
    assert result.exit_code == 0, result.output
    # TAT tunes the image tower only: the text tower of the checkpoint is the base model's, bit for bit
    import torch
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tat.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tuned = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has no items()
    assert meta["format"] == "zscir-tat" and meta["base"] == "zscir-tiny" and meta["training"]
    base = torch.load(train_options["pretrained"], weights_only=True)
    text = [k for k in base if not k.startswith("visual.")]
    image_changed = [k for k in base if k.startswith("visual.") and not torch.equal(base[k], tuned[k])]
    assert text and all(torch.equal(base[k], tuned[k]) for k in text)
    assert image_changed, "two TAT steps left the image encoder unchanged"


def test_user_errors_exit_1_with_one_error_line(app, train_world, train_options, tmp_path):
    no_sources = runner.invoke(app, ["lincir", *tiny(train_options), "--out", str(tmp_path / "a.pt")])
    assert no_sources.exit_code == 1 and "Error:" in no_sources.output and "--captions" in no_sources.output
    assert "Traceback" not in no_sources.output
    missing = runner.invoke(app, ["pic2word", "--images", str(tmp_path / "nowhere"), *tiny(train_options),
                                  "--out", str(tmp_path / "b.pt")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    resume = runner.invoke(app, ["pic2word", "--images", str(train_world / "train" / "unlabeled.txt"),
                                 *tiny(train_options), "--out", str(tmp_path / "c.pt"), "--resume"])
    assert resume.exit_code == 1 and "no training state" in resume.output
    unknown = runner.invoke(app, ["tat", "--pairs", "x.jsonl", "--preset", "no-such-preset"])
    assert unknown.exit_code == 1 and "lincir-vit-l-14" in unknown.output


@pytest.mark.parametrize("name", list_presets())
def test_presets_resolve_to_the_papers_settings(name):
    preset = load_preset(name)
    method = preset["method"]
    cfg = resolve_config(CONFIGS[method], method, name, {"out": "x.safetensors"})
    assert cfg.preset == name and preset["description"]
    if name.endswith("-world"):
        assert cfg.model == "world-clip"
        return
    assert (cfg.model, cfg.pretrained) in PAPER_BACKBONES
    if method == "lincir":
        assert (cfg.lr, cfg.weight_decay, cfg.schedule, cfg.batch_size) == (1e-4, 0.01, "constant", 512)
    if method == "pic2word":
        assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.schedule) == ((0.9, 0.98), 1e-6, 0.1, "cosine")
    if method == "tat":
        assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (16, 16.0, 0.1)


def test_options_override_the_preset():
    cfg = resolve_config(LinCIRConfig, "lincir", "lincir-vit-h-14", {"steps": 7, "lr": None})
    assert (cfg.model, cfg.steps, cfg.lr) == ("ViT-H-14", 7, 1e-4)
    with pytest.raises(ValueError, match="is for 'lincir'"):
        resolve_config(TATConfig, "tat", "lincir-vit-l-14", {})
