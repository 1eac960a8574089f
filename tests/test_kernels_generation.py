"""linearize.generation on CPU (eager path, PyTorch references): same tokens as HF generate."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import linearize
from linearize import LinearizeConfig, convert
from linearize.generation import fast_generate, stream_generate


def tiny(method):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = convert(LlamaForCausalLM(cfg).eval(), LinearizeConfig(method=method, window=4, feature_dim=8,
                                                               chunk_size=8, num_slots=8))
    with torch.no_grad():
        for _, p in linearize.new_parameters(m):
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("method", ["hedgehog", "lizard", "gsa"])
def test_fast_generate_matches_hf_generate(method):
    m = tiny(method)
    x = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(1))
    ref = m.generate(x, max_new_tokens=9, do_sample=False)
    out, stats = fast_generate(m, x, 9, return_stats=True)
    assert torch.equal(out, ref)
    assert stats.new_tokens == 9 and not stats.graph
    chunks = [new for new, _ in stream_generate(m, x, 9, chunk=4)]
    assert [c.shape[1] for c in chunks] == [4, 4, 1]
    assert torch.equal(torch.cat(chunks, 1), ref[:, 11:])


@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_fast_generate_hybrid_static_kv_matches_hf_generate(method):
    """Softmax-kept layers decode from fixed-length buffers (the CUDA-graph shape) and give HF
    generate's tokens, with left padding in the batch (the padded keys must stay masked)."""
    from linearize.cache import LinearizedCache, StaticKV
    from transformers.cache_utils import StaticLayer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = convert(LlamaForCausalLM(cfg).eval(), LinearizeConfig(method=method, window=4, feature_dim=8, chunk_size=8,
                                                               softmax_layers=[1]))
    with torch.no_grad():
        for _, p in linearize.new_parameters(m):
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randint(1, 101, (3, 13), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(x)
    mask[1, :4] = 0  # left padding in one row, a shorter prompt in another
    mask[2, :1] = 0
    x = x.masked_fill(mask == 0, 0)
    ref = m.generate(x, attention_mask=mask, max_new_tokens=10, do_sample=False)
    out = fast_generate(m, x, 10, attention_mask=mask)
    assert torch.equal(out, ref)
    # the decode mask matters: buffers that leave the padded keys open give other tokens
    real = StaticKV.from_prefill.__func__
    try:
        StaticKV.from_prefill = classmethod(lambda cls, cache, am, n: real(cls, cache, None, n))
        unmasked = fast_generate(m, x, 10, attention_mask=mask)
    finally:
        StaticKV.from_prefill = classmethod(real)
    assert torch.equal(unmasked[0], ref[0]) and not torch.equal(unmasked, ref)

    # the buffers: prompt in the first T slots, each step opens exactly one more slot
    from linearize.generation import prefill
    _, cache, _ = prefill(m, x, mask)
    skv = StaticKV.from_prefill(cache, mask, 13 + 5)
    assert isinstance(cache.layers[1], StaticLayer) and cache.layers[1].keys.shape[2] == 18
    assert isinstance(cache, LinearizedCache)
    open_slots = (skv.mask == 0).sum(-1).flatten()
    assert open_slots.tolist() == [13, 9, 12]
    skv.open_next()
    assert ((skv.mask == 0).sum(-1).flatten() - open_slots).tolist() == [1, 1, 1]
    assert bool((skv.mask[..., 13] == 0).all()) and bool((skv.mask[..., 14:] < 0).all())
