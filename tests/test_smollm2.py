"""End to end on the real SmolLM2-135M (30 layers, 9 heads, 3 kv heads), fp32, CPU."""
from __future__ import annotations

import copy

import pytest
import torch

import linearize
from linearize import LinearizeConfig, convert
from linearize.surgery import linearized_modules


@pytest.mark.parametrize("method", ["lizard", "hedgehog", "gsa"])
def test_generate_equals_parallel_argmax(smollm2, method):
    teacher, tok = smollm2
    model = convert(copy.deepcopy(teacher), LinearizeConfig(method=method, softmax_layers=[0] if method == "gsa" else []))
    assert linearize.surgery.count_new_parameters(model) > 0
    enc = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        for m in linearized_modules(model):
            m.lcfg.form = "parallel"
        pred = model(out).logits.argmax(-1)
    n = enc["input_ids"].shape[1]
    assert torch.equal(pred[0, n - 1:-1], out[0, n:])


def test_full_window_hybrid_is_the_teacher(smollm2):
    teacher, tok = smollm2
    model = convert(copy.deepcopy(teacher), LinearizeConfig(method="lizard", window=128, num_meta_tokens=0))
    for m in linearized_modules(model):
        m.linear_enabled = False
    enc = tok(["A linear attention RNN keeps a fixed-size state, so memory does not grow."], return_tensors="pt")
    with torch.no_grad():
        assert (model(**enc).logits - teacher(**enc).logits).abs().max() < 1e-3
