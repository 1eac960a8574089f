"""Linearized*Config / Linearized*ForCausalLM for each supported family, registered with the
Auto classes so a converted checkpoint reloads with ``AutoModelForCausalLM.from_pretrained``.

Each class subclasses the family's own (LlamaForCausalLM, ...): building it builds the original
model and swaps the attention per ``config.linearize``; the weights keep their original names.
Its ``forward`` routes the 2-D padding mask to the linear layers, and gives ``generate`` a
LinearizedCache (fixed-size recurrent state) instead of a growing key/value cache.
"""
from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .cache import LinearizedCache
from .cache_kwarg import cache_kwarg, pick_cache
from .config import LinearizeConfig
from .surgery import linear_layer_flags


def _make_family(family: str, config_cls, model_cls):
    model_type = f"linearized_{family}"

    class LinConfig(config_cls):
        def __init__(self, linearize: dict | None = None, **kwargs):
            # validated here so that a hand-edited config fails on load, not mid-forward
            self.linearize = LinearizeConfig.from_dict(linearize or {}).to_dict()
            super().__init__(**kwargs)

    LinConfig.model_type = model_type
    LinConfig.__name__ = LinConfig.__qualname__ = f"Linearized{config_cls.__name__}"

    class LinModel(model_cls):
        config_class = LinConfig

        def __init__(self, config):
            super().__init__(config)
            from .rmsnorm import swap_norms
            from .surgery import swap_attention

            swap_attention(self, LinearizeConfig.from_dict(config.linearize))
            swap_norms(self)

        @property
        def linearize_config(self) -> LinearizeConfig:
            return LinearizeConfig.from_dict(self.config.linearize)

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cache=None, **kwargs):
            past_key_values = pick_cache(cache, past_key_values)  # transformers >= 5.24 names it `cache`
            if use_cache is None:  # a plain forward builds no state; generate asks for it explicitly
                use_cache = past_key_values is not None
            if use_cache and (past_key_values is None or
                              (not isinstance(past_key_values, LinearizedCache) and past_key_values.get_seq_length() == 0)):
                past_key_values = LinearizedCache.for_model(self)  # replaces generate's empty DynamicCache
            elif past_key_values is not None and not isinstance(past_key_values, LinearizedCache):
                raise TypeError(f"a linearized model continues only a LinearizedCache, got {type(past_key_values).__name__}")
            # decided once here, not once per layer (a device sync each): a [B, T] bool of the real
            # tokens, or False when none is padded. False matters under CUDA-graph capture: HF then
            # builds a 4-D causal mask the layers could not check without syncing the host
            padding = None
            if attention_mask is None:
                padding = False
            elif attention_mask.dim() == 2:
                padding = False if bool(attention_mask.all()) else attention_mask.bool()
            if all(linear_layer_flags(self)):
                attention_mask = None  # nothing would read the 4-D mask: skip building it
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                **{cache_kwarg(): past_key_values}, inputs_embeds=inputs_embeds, labels=labels,
                use_cache=use_cache, logits_to_keep=logits_to_keep, linearize_padding_mask=padding, **kwargs,
            )

        def generate(self, input_ids=None, attention_mask=None, linearize_fast: bool | None = None, **kwargs):
            """HF ``generate``; on CUDA (or with ``linearize_fast=True``) plain greedy / temperature /
            top-k / top-p requests run on linearize.generation.fast_generate: Triton step kernels, the
            decode step replayed from a CUDA graph (``linearize_compile=True``: also torch.compile'd).
            ``linearize_fast=False``, or any option fast_generate does not reproduce (beams,
            penalties, streamers, processors), keeps HF's loop."""
            from .generation import fast_generate_plan, generate_like_hf

            compile = bool(kwargs.pop("linearize_compile", False))
            if linearize_fast is None:
                linearize_fast = input_ids is not None and input_ids.is_cuda
            if linearize_fast and input_ids is not None and kwargs.get("inputs_embeds") is None:
                gc = fast_generate_plan(self, {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
                if gc is not None:
                    return generate_like_hf(self, input_ids, attention_mask, gc, compile=compile)
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            want_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            bad = {k: sorted(info[k])[:8] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
            if bad:
                method = model.config.linearize.get("method")
                raise ValueError(
                    f"checkpoint does not match its linearize config (method {method!r}): {bad}; "
                    "was it saved by another method or edited by hand?"
                )
            model.eval()
            return (model, info) if want_info else model

    LinModel.__name__ = LinModel.__qualname__ = f"Linearized{model_cls.__name__}"
    LinModel.__module__ = __name__
    LinConfig.__module__ = __name__
    return LinConfig, LinModel


# model_type -> (original config class, original model class, linearized config, linearized model)
FAMILIES = {}
for _family, _cfg, _model in (
    ("llama", LlamaConfig, LlamaForCausalLM),
    ("mistral", MistralConfig, MistralForCausalLM),
    ("qwen2", Qwen2Config, Qwen2ForCausalLM),
):
    _lc, _lm = _make_family(_family, _cfg, _model)
    FAMILIES[_family] = (_cfg, _model, _lc, _lm)
    globals()[_lc.__name__] = _lc
    globals()[_lm.__name__] = _lm

LINEARIZED_MODEL_TYPES = {lc.model_type: lm for _, _, lc, lm in FAMILIES.values()}


def register_auto_classes() -> None:
    for _, _, lc, lm in FAMILIES.values():
        AutoConfig.register(lc.model_type, lc, exist_ok=True)
        AutoModelForCausalLM.register(lc, lm, exist_ok=True)
