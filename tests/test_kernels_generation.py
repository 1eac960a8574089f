"""linearize.generation on CPU (eager path, PyTorch references): same tokens as HF generate."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import linearize
from linearize import LinearizeConfig, convert
from linearize.cache_kwarg import cache_kwarg
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


def tiny_hybrid(method):
    """Three layers, the middle one kept softmax."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return convert(LlamaForCausalLM(cfg).eval(), LinearizeConfig(method=method, window=4, feature_dim=8, chunk_size=8,
                                                                 softmax_layers=[1]))


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


def test_static_kv_slots_round_up():
    """Buffer lengths come in multiples of 256, so a short warm-up call and the real one (16K prompt,
    4 vs 256 new tokens) share one compiled decode step; fast_generate's token equality with HF
    (below) runs on such rounded buffers."""
    from linearize.cache import StaticKV

    assert [StaticKV.slots_for(n) for n in (1, 256, 257, 1028, 1280)] == [256, 256, 512, 1280, 1280]
    assert StaticKV.slots_for(16384 + 4) == StaticKV.slots_for(16384 + 256) == 16640


@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_fast_generate_hybrid_static_kv_matches_hf_generate(method):
    """Softmax-kept layers decode from fixed-length buffers (the CUDA-graph shape) and give HF
    generate's tokens, with left padding in the batch (the padded keys must stay masked)."""
    from linearize.cache import LinearizedCache, StaticKV
    from transformers.cache_utils import StaticLayer

    m = tiny_hybrid(method)
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


@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_fused_decode_step_matches_the_layer_forward(method):
    """fused_decode (merged q/k/v/gate-down and gate/up GEMMs) gives the decoder layer's own output
    and leaves the same recurrent state, fp32, one token after a prefill."""
    import copy

    from linearize import fused_decode
    from linearize.generation import prefill

    m = tiny(method)
    x = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(3))
    _, cache, last = prefill(m, x)
    cache2 = copy.deepcopy(cache)
    inner = m.model
    ids = torch.randint(0, 101, (2, 1), generator=torch.Generator().manual_seed(4))
    pos = (last + 1).view(2, 1)
    with torch.no_grad():
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, position_ids=pos)
        layer = inner.layers[1]
        assert fused_decode.FusedLayer.supports(layer)
        ref = layer(h, attention_mask=None, position_ids=pos, **{cache_kwarg(): cache}, use_cache=True,
                    position_embeddings=(cos, sin))
        ref = ref[0] if isinstance(ref, tuple) else ref
        out = fused_decode.step(layer, fused_decode.FusedLayer(layer), cache2.layers[1], h, cos, sin)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, t in cache.layers[1].state.items():
        if torch.is_tensor(t):
            torch.testing.assert_close(cache2.layers[1].state[name], t, rtol=1e-5, atol=1e-6)
    assert cache2.layers[1].seen == cache.layers[1].seen


def test_fused_decode_falls_back_for_gsa_and_unmerged_lora():
    from linearize import fused_decode

    assert not fused_decode.FusedLayer.supports(tiny("gsa").model.layers[0])
    m = tiny("lizard")
    layer = m.model.layers[0]
    assert fused_decode.FusedLayer.supports(layer)
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not fused_decode.FusedLayer.supports(pm.base_model.model.model.layers[0])


@pytest.mark.slow
def test_fused_decode_compiled_gives_the_eager_tokens():
    """The torch.compile'd halves (the CUDA fast path; here Inductor's CPU backend) decode the same
    greedy tokens as the eager ones, in a hybrid (linear layers 0 and 2, softmax layer 1)."""
    from linearize.cache import StaticKV
    from linearize.generation import _Decoder, _prepare_states, prefill

    m = tiny_hybrid("lizard")
    x = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(1))
    outs = []
    for comp in (False, True):
        lg, cache, lp = prefill(m, x)
        skv = StaticKV.from_prefill(cache, None, 11 + 6)
        _prepare_states(cache)
        d = _Decoder(m, cache, lg.argmax(-1), lp + 1, 6, 0.0, None, compile=comp, static_kv=skv)
        with torch.no_grad():
            for _ in range(5):
                d.step()
        outs.append(d.out.clone())
    assert torch.equal(outs[0], outs[1])


def test_fused_decode_softmax_step_matches_the_layer_forward():
    """A hybrid's softmax layer decodes through fused_decode.softmax_step (merged GEMMs, SDPA over the
    StaticKV buffers) with the HF layer's output and the same buffer contents, with left padding."""
    import copy

    from linearize import fused_decode
    from linearize.cache import StaticKV
    from linearize.generation import _Decoder, prefill

    m = tiny_hybrid("lizard")
    x = torch.randint(1, 101, (2, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    _, cache, last = prefill(m, x, mask)
    skv = StaticKV.from_prefill(cache, mask, 12)
    cache2, skv2 = copy.deepcopy(cache), copy.deepcopy(skv)
    layer = m.model.layers[1]
    assert fused_decode.FusedLayer.supports(layer)
    ids = torch.randint(1, 101, (2, 1), generator=torch.Generator().manual_seed(6))
    pos = (last + 1).view(2, 1)
    with torch.no_grad():
        h = m.model.embed_tokens(ids)
        cos, sin = m.model.rotary_emb(h, position_ids=pos)
        am = skv.open_next()
        ref = layer(h, attention_mask=am, position_ids=pos, **{cache_kwarg(): cache}, use_cache=True,
                    position_embeddings=(cos, sin))
        ref = ref[0] if isinstance(ref, tuple) else ref
        out = fused_decode.softmax_step(layer, fused_decode.FusedLayer(layer), cache2.layers[1], skv2.open_next(),
                                        h, cos, sin)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache2.layers[1].keys, cache.layers[1].keys)
    torch.testing.assert_close(cache2.layers[1].values, cache.layers[1].values)
    # the decoder routes both kinds of layer through fused_decode
    _, c3, l3 = prefill(m, x, mask)
    d = _Decoder(m, c3, ids[:, 0], l3 + 1, 4, 0.0, None, static_kv=StaticKV.from_prefill(c3, mask, 12))
    assert all(f is not None for f in d.fused)


@pytest.mark.parametrize("method", ["lizard", "gsa"])
def test_model_generate_on_the_fast_path_gives_hf_tokens(method):
    """model.generate(linearize_fast=True) (the default on CUDA) returns HF generate's output: greedy,
    with left padding, with an end-of-sequence token that stops one row (padded after it) or all
    rows (the output ends there)."""
    m = tiny(method)
    T = 7
    x = torch.randint(3, 101, (3, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[2, :2] = 0
    x = x.masked_fill(mask == 0, 0)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    ref = m.generate(x, **kw, linearize_fast=False)
    assert torch.equal(m.generate(x, **kw, linearize_fast=True), ref)
    one = int(ref[0, T + 3])  # row 0 stops at its 4th new token
    r1 = m.generate(x, **kw, eos_token_id=one, linearize_fast=False)
    assert torch.equal(m.generate(x, **kw, eos_token_id=one, linearize_fast=True), r1)
    every = [int(t) for t in ref[:, T + 1]]  # every row stops at its 2nd new token
    r2 = m.generate(x, **kw, eos_token_id=every, linearize_fast=False)
    assert r2.shape[1] < T + 12
    assert torch.equal(m.generate(x, **kw, eos_token_id=every, linearize_fast=True), r2)


def test_model_generate_keeps_hf_loop_for_what_fast_generate_does_not_do(monkeypatch):
    import linearize.generation as gen

    m = tiny("lizard")
    x = torch.randint(3, 101, (2, 5), generator=torch.Generator().manual_seed(2))

    def boom(*a, **k):
        raise AssertionError("fast path taken")

    monkeypatch.setattr(gen, "generate_like_hf", boom)
    for extra in (dict(num_beams=2), dict(repetition_penalty=1.3), dict(do_sample=True, min_p=0.1),
                  dict(min_new_tokens=3), dict(output_scores=True, return_dict_in_generate=True)):
        m.generate(x, max_new_tokens=4, linearize_fast=True, pad_token_id=0, **extra)
    assert gen.fast_generate_plan(m, dict(max_new_tokens=4, do_sample=True, temperature=0.7, top_k=5)) is not None
    assert gen.fast_generate_plan(m, dict(max_new_tokens=4, streamer=object())) is None
    with pytest.raises(AssertionError, match="fast path"):
        m.generate(x, max_new_tokens=4, linearize_fast=True)


def test_sample_top_p_keeps_the_nucleus():
    """_sample with top_p: only the smallest set of tokens whose mass reaches top_p can be drawn
    (the most likely token always can); temperature and top_k compose with it."""
    from linearize.generation import _sample

    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    drawn = _sample(logits, 1.0, None, 0.7)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    freq = (drawn == 0).float().mean().item()
    assert abs(freq - 0.5 / 0.8) < 0.03  # renormalised over the nucleus
    assert set(_sample(logits, 1.0, None, 0.4).tolist()) == {0}
    assert set(_sample(logits, 1.0, 3, 0.99).tolist()) == {0, 1, 2}
    assert set(_sample(logits, 1.0, 2, 0.6).tolist()) == {0}  # top-k first: 0.5 / 0.8 >= 0.6 (0.5 < 0.6 without it)


@pytest.mark.parametrize("hybrid", [False, True])
def test_decode_without_merged_weights_over_the_budget(monkeypatch, hybrid):
    """Past LINEARIZE_DECODE_MERGE_BYTES the decoder keeps no merged copies and calls the layers'
    own projections: same tokens as HF generate."""
    from linearize.cache import StaticKV
    from linearize.generation import _Decoder, _prepare_states, prefill

    m = tiny_hybrid("lizard") if hybrid else tiny("lizard")
    x = torch.randint(1, 101, (2, 9), generator=torch.Generator().manual_seed(7))
    ref = m.generate(x, max_new_tokens=6, do_sample=False, linearize_fast=False)
    monkeypatch.setenv("LINEARIZE_DECODE_MERGE_BYTES", "0")
    assert torch.equal(fast_generate(m, x, 6), ref)
    lg, cache, lp = prefill(m, x)
    skv = StaticKV.from_prefill(cache, None, 15) if hybrid else None
    _prepare_states(cache)
    d = _Decoder(m, cache, lg.argmax(-1), lp + 1, 6, 0.0, None, static_kv=skv)
    assert all(f is not None and f.w_in is None and f.w_gu is None for f in d.fused)


@pytest.mark.parametrize("hybrid", [False, True])
def test_mask_sizes_follow_the_softmax_layers(hybrid):
    """The 4-D mask a continuation builds spans the context only where a softmax layer reads it: a
    pure linear model's covers the new tokens alone (its memory must not grow with the context)."""
    from linearize.generation import prefill

    m = tiny_hybrid("lizard") if hybrid else tiny("lizard")
    x = torch.randint(1, 101, (2, 23), generator=torch.Generator().manual_seed(9))
    _, cache, _ = prefill(m, x)
    assert cache.get_mask_sizes(5, 0) == ((23 + 5, 0) if hybrid else (5, 0))


@pytest.mark.parametrize("method,hybrid", [("lizard", False), ("hedgehog", False), ("gsa", False), ("lizard", True)])
def test_segmented_prefill_matches_the_whole_prompt(method, hybrid):
    """A prompt prefilled in segments (each continuing the state in the chunked form) gives the
    whole-prompt prefill's last logits and the same generated tokens, with left padding."""
    from linearize.generation import prefill

    m = tiny_hybrid(method) if hybrid else tiny(method)
    x = torch.randint(1, 101, (2, 23), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    x = x.masked_fill(mask == 0, 0)
    whole, _, last = prefill(m, x, mask)
    for seg in (3, 7, 16):
        part, cache, last2 = prefill(m, x, mask, segment=seg)
        torch.testing.assert_close(part, whole, rtol=1e-4, atol=1e-5)
        assert torch.equal(last2, last)
    ref = fast_generate(m, x, 8, attention_mask=mask)
    import linearize.generation as gen

    old = gen.PREFILL_SEGMENT
    try:
        gen.PREFILL_SEGMENT = 6
        assert torch.equal(fast_generate(m, x, 8, attention_mask=mask), ref)
    finally:
        gen.PREFILL_SEGMENT = old
