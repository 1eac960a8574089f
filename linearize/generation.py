"""Fast generation for converted (all-linear) checkpoints: one prefill through the chunked kernels,
then a decode step captured once in a CUDA graph and replayed per token.

    from linearize.generation import fast_generate, stream_generate
    out = fast_generate(model, input_ids, max_new_tokens=256)          # [B, T + new] token ids
    for tokens, stats in stream_generate(model, input_ids, 256):         # tokens: [B, k] new ids
        ...

Why it is fast: every linear layer's state is fixed-size, so after the prefill every buffer the
decode step touches (the recurrent states, the input token, the positions, the output) exists and
never moves; the step counter lives on the device (state["pos"], the positions tensor), so the
whole step (embedding, 30 layers with one Triton kernel each, the head and the sampling) replays
as one graph launch and Python is out of the loop. Layers kept as softmax (hybrids) get their
prompt's keys/values moved into preallocated buffers of the final length (transformers'
``StaticLayer``, whose write position is a device tensor) and an additive mask of the same length,
so they replay in the same graph. CPU models and LINEARIZE_CUDA_GRAPH=0 run an eager loop over
the same step.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .attention.hybrid import step_counter
from .cache import LinearizedCache, RecurrentLayer, StaticKV
from .cache_kwarg import cache_kwarg, output_cache


@dataclass
class GenerationStats:
    batch: int
    prompt_len: int
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    graph: bool = False
    peak_memory_bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (all rows) per second, prefill included."""
        t = self.prefill_s + self.decode_s
        return self.batch * self.new_tokens / t if t > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"batch": self.batch, "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s, "graph": self.graph,
                "tokens_per_s": self.tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "peak_memory_bytes": self.peak_memory_bytes, **self.extra}


def _ensure_kernels() -> None:
    try:
        from . import kernels  # noqa: F401  (registers the Triton kernels with dispatch)
    except ImportError:  # pragma: no cover - no triton: the references run
        pass


def _inner(model):
    return model.model


def _sample(logits, temperature: float, top_k: int | None, top_p: float | None = None):
    if temperature <= 0:
        return logits.argmax(-1)
    # HF's order: temperature, top-k, top-p
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:  # nucleus: keep the smallest set of tokens with mass >= top_p
        srt, idx = logits.sort(-1, descending=True)
        p = srt.softmax(-1)
        drop = p.cumsum(-1) - p > top_p  # mass before a token already covers top_p (the first one stays)
        logits = logits.scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    u = torch.rand_like(logits).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max: no host sync, graph-safe


class _Decoder:
    """The decode step over static buffers: ids [B, 1], positions [B, 1], output tokens [B, N].

    Hedgehog / Lizard layers and a hybrid's softmax layers run through linearize.fused_decode
    (merged projection GEMMs; with ``compile`` their elementwise glue fused by torch.compile); GSA
    layers (and anything fused_decode does not support) run the module's own forward."""

    def __init__(self, model, cache, first_ids, first_pos, max_new_tokens, temperature, top_k, compile=False,
                 static_kv: "StaticKV | None" = None, top_p: float | None = None):
        from .fused_decode import FusedLayer

        self.model, self.cache, self.static_kv = model, cache, static_kv
        self.compile = bool(compile)
        layers = _inner(model).layers
        ok = [FusedLayer.supports(l) and (_is_linear(l) or static_kv is not None) for l in layers]
        budget = int(os.environ.get("LINEARIZE_DECODE_MERGE_BYTES", 1 << 30))
        merge = sum(FusedLayer.merged_bytes(l) for l, k in zip(layers, ok) if k) <= budget
        self.fused = [FusedLayer(l, merge=merge) if k else None for l, k in zip(layers, ok)]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        B = first_ids.shape[0]
        dev = first_ids.device
        self.ids = first_ids.view(B, 1).clone()
        self.pos = first_pos.view(B, 1).clone()
        self.out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=dev)
        self.out[:, 0] = self.ids[:, 0]
        self.t = torch.ones(B, 1, dtype=torch.long, device=dev)  # next column of self.out
        self.graph = None

    def _forward(self):
        from . import fused_decode

        inner = _inner(self.model)
        x = inner.embed_tokens(self.ids)
        pe = inner.rotary_emb(x, position_ids=self.pos)
        mask = self.static_kv.open_next() if self.static_kv is not None else None
        for i, layer in enumerate(inner.layers):
            linear = _is_linear(layer)
            if self.fused[i] is not None:
                if linear:
                    x = fused_decode.step(layer, self.fused[i], self.cache.layers[i], x, pe[0], pe[1], self.compile)
                else:
                    x = fused_decode.softmax_step(layer, self.fused[i], self.cache.layers[i], mask, x, pe[0], pe[1],
                                                  self.compile)
                continue
            x = layer(x, attention_mask=None if linear else mask, position_ids=self.pos, **{cache_kwarg(): self.cache},
                      use_cache=True, position_embeddings=pe)
            if isinstance(x, tuple):
                x = x[0]
        x = inner.norm(x)
        return self.model.lm_head(x[:, -1])

    def step(self):
        nxt = _sample(self._forward(), self.temperature, self.top_k, self.top_p)
        self.ids.copy_(nxt.view(-1, 1))
        self.pos.add_(1)
        self.out.scatter_(1, self.t.clamp(max=self.out.shape[1] - 1), self.ids)
        self.t.add_(1)

    def _python_counters(self):
        return [(l, l.seen, l.state["n"]) for l in self.cache.layers if isinstance(l, RecurrentLayer)]

    def capture(self):
        """One eager step on a side stream (warm-up: allocations, autotuning), then capture."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self.step()
        torch.cuda.current_stream().wait_stream(s)
        saved = self._python_counters()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()
        for layer, seen, n in saved:  # capture ran the Python once without running the GPU work
            layer.seen, layer.state["n"] = seen, n

    def replay(self):
        self.graph.replay()
        for layer in self.cache.layers:
            if isinstance(layer, RecurrentLayer):
                layer.seen += 1
                layer.state["n"] += 1


def _is_linear(layer) -> bool:
    from .attention.base import LinearizedAttention

    return isinstance(layer.self_attn, LinearizedAttention)


def _all_linear(cache) -> bool:
    return all(isinstance(l, RecurrentLayer) for l in cache.layers)


PREFILL_SEGMENT = int(os.environ.get("LINEARIZE_PREFILL_SEGMENT", "0"))


@torch.no_grad()
def prefill(model, input_ids, attention_mask=None, segment: int | None = None):
    """Run the prompt through the chunked form. Returns (last logits [B, vocab], cache, positions [B]).

    ``segment`` (default LINEARIZE_PREFILL_SEGMENT, 0 = whole prompt): feed the prompt in pieces of
    this many tokens, each continuing the recurrent state in the chunked form, so the prefill's
    activations (and the peak memory) stop growing with the prompt; softmax layers of a hybrid
    still keep every key and value."""
    _ensure_kernels()
    cache = LinearizedCache.for_model(model)
    B, T = input_ids.shape
    if attention_mask is not None:
        pos_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    else:
        pos_ids = torch.arange(T, device=input_ids.device)[None].expand(B, -1)
    seg = segment if segment is not None else PREFILL_SEGMENT
    seg = T if not seg or seg >= T else int(seg)
    for start in range(0, T, seg):
        end = min(T, start + seg)
        out = model(input_ids=input_ids[:, start:end],
                    attention_mask=None if attention_mask is None else attention_mask[:, :end],
                    position_ids=pos_ids[:, start:end], **{cache_kwarg(): cache}, use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
    return out.logits[:, -1], cache, pos_ids[:, -1]


def _prepare_states(cache):
    """Give every hybrid state its device step counter before anything is captured."""
    for layer in cache.layers:
        if isinstance(layer, RecurrentLayer) and layer.state is not None and "k" in layer.state:
            st = layer.state
            st["pos"] = step_counter(st["n"], *st["k"].shape[:2], st["k"].device)


@torch.no_grad()
def stream_generate(model, input_ids, max_new_tokens: int, attention_mask=None, temperature: float = 0.0,
                    top_k: int | None = None, cuda_graph: bool | None = None, chunk: int = 16,
                    eos_token_id: int | None = None, compile: bool = False,
                    top_p: float | None = None) -> Iterator[tuple[torch.Tensor, GenerationStats]]:
    """Yield (new tokens [B, k] on the CPU, running stats) every ``chunk`` tokens. Stops after
    ``max_new_tokens`` or once every row has produced ``eos_token_id``."""
    B, T = input_ids.shape
    dev = input_ids.device
    stats = GenerationStats(batch=B, prompt_len=T)
    if max_new_tokens <= 0:
        return
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits, cache, last_pos = prefill(model, input_ids, attention_mask)
    first = _sample(logits, temperature, top_k, top_p)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    stats.prefill_s = time.perf_counter() - t0
    stats.new_tokens = 1
    if cuda_graph is None:
        cuda_graph = dev.type == "cuda" and os.environ.get("LINEARIZE_CUDA_GRAPH", "1") != "0"
    # softmax-kept layers: keys/values into buffers of the final length, so every step has one shape
    static_kv = None if _all_linear(cache) else StaticKV.from_prefill(cache, attention_mask,
                                                                      StaticKV.slots_for(T + max_new_tokens))
    _prepare_states(cache)
    dec = _Decoder(model, cache, first, last_pos + 1, max_new_tokens, temperature, top_k,
                   compile=compile and dev.type == "cuda", static_kv=static_kv, top_p=top_p)
    stats.graph = bool(cuda_graph)
    done = 1
    yielded = 0
    t1 = time.perf_counter()
    if cuda_graph and max_new_tokens > 1:
        dec.capture()  # its warm-up step is a real step: token 2
        done = 2
    while done < max_new_tokens:
        if dec.graph is not None:
            dec.replay()
        else:
            dec.step()
        done += 1
        if done - yielded >= chunk or done == max_new_tokens:
            new = dec.out[:, yielded:done].cpu()  # syncs
            stats.new_tokens, stats.decode_s = done, time.perf_counter() - t1
            yielded = done
            yield new, stats
            if eos_token_id is not None and bool((dec.out[:, :done] == eos_token_id).any(-1).all()):
                return
    if yielded < done:
        new = dec.out[:, yielded:done].cpu()
        stats.new_tokens, stats.decode_s = done, time.perf_counter() - t1
        yield new, stats


@torch.no_grad()
def fast_generate(model, input_ids, max_new_tokens: int, attention_mask=None, temperature: float = 0.0,
                  top_k: int | None = None, cuda_graph: bool | None = None, return_stats: bool = False,
                  compile: bool = False, top_p: float | None = None):
    """Greedy (or temperature / top-k) generation: returns [B, T + max_new_tokens] token ids
    (and GenerationStats with ``return_stats``). Syncs with the host only at the end.
    ``compile=True`` (CUDA) fuses the PyTorch ops around each layer's step kernel with torch.compile
    (compiled once, reused by every layer; costs a compile on first use)."""
    stats = GenerationStats(batch=input_ids.shape[0], prompt_len=input_ids.shape[1])
    is_cuda = input_ids.device.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    parts = []
    for new, stats in stream_generate(model, input_ids, max_new_tokens, attention_mask, temperature, top_k,
                                      cuda_graph, chunk=max(1, max_new_tokens), compile=compile, top_p=top_p):
        parts.append(new)
    if is_cuda:
        stats.peak_memory_bytes = torch.cuda.max_memory_allocated()
    out = torch.cat([input_ids.cpu(), *parts], 1).to(input_ids.device) if parts else input_ids
    return (out, stats) if return_stats else out


# ------------------------------------------------------------------ model.generate() on the fast path

# GenerationConfig fields fast_generate reproduces, with the values at which it does (anything else
# set to something else sends generate() to HF's loop)
_NEUTRAL = {"num_beams": (1, None), "num_beam_groups": (1, None), "min_p": (None, 0.0),
            "typical_p": (1.0, None), "repetition_penalty": (1.0, None), "no_repeat_ngram_size": (0, None),
            "min_new_tokens": (0, None), "min_length": (0, None), "num_return_sequences": (1, None),
            "output_scores": (False, None), "output_logits": (False, None), "return_dict_in_generate": (False, None),
            "output_attentions": (False, None), "output_hidden_states": (False, None), "bad_words_ids": (None,),
            "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,), "stop_strings": (None,), "sequence_bias": (None,),
            "penalty_alpha": (None,), "epsilon_cutoff": (0.0, None), "eta_cutoff": (0.0, None),
            "encoder_repetition_penalty": (1.0, None), "length_penalty": (1.0, None), "guidance_scale": (None, 1.0),
            "assistant_model": (None,), "prompt_lookup_num_tokens": (None,), "watermarking_config": (None,)}
# generate() keyword arguments fast_generate takes (besides GenerationConfig fields)
_CALL_ARGS = {"input_ids", "attention_mask", "generation_config", "use_cache"}


def fast_generate_plan(model, kwargs: dict):
    """The effective GenerationConfig if ``model.generate(**kwargs)`` can run on fast_generate, else
    None (beam search, repetition penalties, streamers, logits processors, ... stay with HF)."""
    import copy

    extra = set(kwargs) - _CALL_ARGS
    gc = copy.deepcopy(kwargs.get("generation_config") or model.generation_config)
    unused = gc.update(**{k: kwargs[k] for k in extra})
    if unused or kwargs.get("use_cache") is False:  # streamer, logits_processor, stopping_criteria, ...
        return None
    for name, ok in _NEUTRAL.items():
        if getattr(gc, name, None) not in ok:
            return None
    if gc.max_new_tokens is None and gc.max_length is None:
        return None
    return gc


@torch.no_grad()
def generate_like_hf(model, input_ids, attention_mask, gc, compile: bool = False):
    """``model.generate`` semantics on fast_generate: greedy, or sampling with temperature / top_k /
    top_p (Gumbel-max, so not HF's random stream); rows stop at an end-of-sequence token and are padded
    with ``pad_token_id`` after it; the output ends when every row has stopped. [B, T + n] ids."""
    T = input_ids.shape[1]
    new = gc.max_new_tokens if gc.max_new_tokens is not None else gc.max_length - T
    if new <= 0:
        return input_ids
    temperature = float(gc.temperature or 1.0) if gc.do_sample else 0.0
    out = fast_generate(model, input_ids, new, attention_mask=attention_mask, temperature=temperature,
                        top_k=(gc.top_k or None) if gc.do_sample else None, compile=compile,
                        top_p=gc.top_p if gc.do_sample else None)
    eos = gc.eos_token_id
    if eos is None:
        return out
    eos = torch.as_tensor([eos] if isinstance(eos, int) else list(eos), device=out.device)
    gen = out[:, T:]
    hit = torch.isin(gen, eos)
    if not bool(hit.any()):
        return out
    done_after = hit.long().cumsum(1) - hit.long() > 0  # positions after each row's first eos
    pad = gc.pad_token_id if gc.pad_token_id is not None else int(eos[0])
    gen = gen.masked_fill(done_after, pad)
    finished = hit.any(1)
    if bool(finished.all()):  # HF stops at the step where the last row finished
        gen = gen[:, : int(hit.long().argmax(1).max()) + 1]
    return torch.cat([out[:, :T], gen], 1)
