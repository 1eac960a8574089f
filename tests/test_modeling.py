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
