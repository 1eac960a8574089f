"""Surgery on tiny random Llama / Mistral / Qwen2 models: weights reused, forms agree through the
whole model, greedy generate (recurrent state) equals the parallel forward's argmax, and the
hybrid reduces to the original softmax attention when its window covers everything."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import perturb_new_parameters, tiny_llama_config

import linearize
from linearize import LinearizeConfig, convert
from linearize.attention import LinearizedAttention
from linearize.cache import LinearizedCache
from linearize.cache_kwarg import output_cache
from linearize.surgery import count_new_parameters, linearized_modules

SMALL = dict(window=4, feature_dim=8, chunk_size=8, num_slots=8, gate_rank=4, num_meta_tokens=2)


def set_form(model, form):
    for m in linearized_modules(model):
        m.lcfg.form = form


def tiny(family="llama", **kw):
    from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    base = tiny_llama_config(**kw).to_dict()
    for k in ("model_type", "architectures", "transformers_version"):
        base.pop(k, None)
    if family == "llama":
        return LlamaForCausalLM(tiny_llama_config(**kw)).eval()
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**base)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**base)).eval()  # q/k/v have biases: checked below


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("method", ["hedgehog", "lizard", "gsa"])
def test_forms_agree_and_generate_matches_argmax(family, method):
    model = convert(tiny(family), LinearizeConfig(method=method, **SMALL))
    perturb_new_parameters(model)
    x = torch.randint(0, 211, (2, 23), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    logits = {}
    for form in ("parallel", "chunked", "recurrent"):
        set_form(model, form)
        with torch.no_grad():
            logits[form] = model(x, attention_mask=mask).logits
    for form in ("chunked", "recurrent"):
        err = (logits[form] - logits["parallel"])[mask.bool()].abs().max()
        assert err < 1e-4, (form, err)

    set_form(model, "parallel")
    prompt = x[:1, :6]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
        pred = model(out).logits.argmax(-1)
    assert torch.equal(pred[0, 5:-1], out[0, 6:])


def test_generate_uses_recurrent_state_of_constant_size(tiny_llama):
    model = convert(tiny_llama, LinearizeConfig(method="lizard", **SMALL))
    sizes = []
    for n in (8, 40):
        cache = LinearizedCache.for_model(model)
        prompt = torch.randint(0, 211, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            out = model(prompt, past_key_values=cache, use_cache=True)
            assert output_cache(out) is cache and cache.get_seq_length() == n
            step = model(prompt[:, -1:], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == n + 1
        sizes.append(cache.nbytes())
        assert step.logits.shape == (1, 1, 211)
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("method", ["hedgehog", "lizard"])
def test_full_window_without_linear_part_is_the_original_softmax(tiny_llama, method):
    original = copy.deepcopy(tiny_llama)
    lcfg = LinearizeConfig(method=method, window=64, feature_dim=8, chunk_size=16, num_meta_tokens=0)
    model = convert(tiny_llama, lcfg)
    perturb_new_parameters(model)  # the mix and feature maps must not matter once the linear half is off
    for m in linearized_modules(model):
        m.linear_enabled = False
    x = torch.randint(0, 211, (3, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = original(x).logits
        for form in ("parallel", "chunked", "recurrent"):
            set_form(model, form)
            got = model(x).logits
            assert (got - want).abs().max() < 1e-4, form


def test_teacher_mode_is_the_original(tiny_llama):
    original = copy.deepcopy(tiny_llama)
    model = convert(tiny_llama, LinearizeConfig(method="gsa", **SMALL))
    x = torch.randint(0, 211, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), linearize.surgery.attention_mode(model, "teacher"):
        assert (model(x).logits - original(x).logits).abs().max() < 1e-4


def test_weights_reused_and_only_new_parameters_fresh(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = convert(tiny_llama, LinearizeConfig(method="lizard", softmax_layers=[0], **SMALL))
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # every original tensor is there, unchanged, same name
    new = {k for k in after if k not in before}
    assert new == {n for n, _ in linearize.new_parameters(model)}
    assert all(".layers.1." in k for k in new)  # layer 0 stayed softmax
    assert not isinstance(model.model.layers[0].self_attn, LinearizedAttention)
    assert isinstance(model.model.layers[1].self_attn, LinearizedAttention)
    assert count_new_parameters(model) == sum(after[k].numel() for k in new) > 0


def test_softmax_layers_decode_through_the_same_cache(tiny_llama):
    model = convert(tiny_llama, LinearizeConfig(method="hedgehog", softmax_layers=[1], **SMALL))
    set_form(model, "parallel")
    prompt = torch.randint(0, 211, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        pred = model(out).logits.argmax(-1)
    assert torch.equal(pred[0, 6:-1], out[0, 7:])


def test_unsupported_architecture_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported architecture GPT2LMHeadModel"):
        convert(gpt2, LinearizeConfig(method="lizard"))


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown method 'mamba'"):
        LinearizeConfig(method="mamba")
    with pytest.raises(ValueError, match="window must be >= 1"):
        LinearizeConfig(window=0)


def test_converting_twice_is_refused(tiny_llama):
    model = convert(tiny_llama, LinearizeConfig(method="hedgehog", **SMALL))
    with pytest.raises(ValueError, match="already linearized"):
        convert(model, LinearizeConfig(method="lizard"))


def test_layer_index_out_of_range(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        convert(tiny_llama, LinearizeConfig(method="hedgehog", softmax_layers=[5]))


def test_cache_passes_under_either_name(tiny_llama):
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache``: both reach the same state,
    and two different caches at once are refused."""
    model = convert(tiny_llama, LinearizeConfig(method="lizard", **SMALL))
    prompt = torch.randint(0, 211, (1, 9), generator=torch.Generator().manual_seed(3))
    logits = []
    with torch.no_grad():
        for name in ("past_key_values", "cache"):
            c = LinearizedCache.for_model(model)
            model(prompt[:, :-1], use_cache=True, **{name: c})
            logits.append(model(prompt[:, -1:], use_cache=True, **{name: c}).logits)
            assert c.get_seq_length() == 9
        with pytest.raises(ValueError, match="both"):
            model(prompt, cache=LinearizedCache.for_model(model), past_key_values=LinearizedCache.for_model(model))
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
