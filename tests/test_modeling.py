"""Checkpoints that feel native: save_pretrained / AutoModelForCausalLM.from_pretrained round
trip bit-exactly, and a checkpoint whose weights don't match its config is refused."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import perturb_new_parameters
from transformers import AutoConfig, AutoModelForCausalLM

from linearize import LinearizeConfig, convert

SMALL = dict(window=4, feature_dim=8, chunk_size=8, num_slots=8, gate_rank=4, num_meta_tokens=2)


@pytest.mark.parametrize("method", ["hedgehog", "lizard", "gsa"])
def test_round_trip_identical_logits(tiny_llama, tmp_path, method):
    model = convert(tiny_llama, LinearizeConfig(method=method, softmax_layers=[0] if method == "gsa" else [], **SMALL))
    perturb_new_parameters(model)
    model.save_pretrained(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["model_type"] == "linearized_llama" and cfg["linearize"]["method"] == method
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "LinearizedLlamaForCausalLM"
    x = torch.randint(0, 211, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k


def test_checkpoint_saved_by_another_method_is_refused(tiny_llama, tmp_path):
    convert(tiny_llama, LinearizeConfig(method="hedgehog", **SMALL)).save_pretrained(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["linearize"]["method"] = "lizard"
    json.dump(cfg, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="does not match its linearize config"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_auto_config_knows_every_family():
    for family in ("llama", "mistral", "qwen2"):
        assert AutoConfig.for_model(f"linearized_{family}").linearize["method"] == LinearizeConfig().method


def test_unpadded_batches_skip_the_mask(tiny_llama, monkeypatch):
    """The model's forward decides padding once: with no mask or an all-ones one the layers take
    "nothing padded" as given and never read HF's 4-D mask (under CUDA-graph capture HF builds one
    they could not check without a host sync; reading it made every graphed training step run the
    padded code: masked SDPA, masked keys and gates). A padded batch still reaches them, and its
    real rows come out as when run alone."""
    from linearize.attention import base

    model = convert(tiny_llama, LinearizeConfig(method="lizard", softmax_layers=[1], **SMALL)).eval()
    perturb_new_parameters(model)
    seen = []
    real = base.padding_from_mask
    monkeypatch.setattr(base, "padding_from_mask", lambda m, T: seen.append(m) or real(m, T))
    x = torch.randint(0, 211, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(x).logits
        b = model(x, attention_mask=torch.ones_like(x)).logits
        assert seen == [] and torch.equal(a, b)
        mask = torch.ones_like(x)
        mask[1, :5] = 0  # left padding
        c = model(x, attention_mask=mask).logits
        alone = model(x[1:, 5:], position_ids=torch.arange(5, 19)[None]).logits  # the same positions
    assert len(seen) > 0 and all(m is not None and m.dim() == 2 for m in seen)
    assert torch.allclose(c[0], a[0], atol=1e-5) and torch.allclose(c[1, 5:], alone[0], atol=1e-4)
