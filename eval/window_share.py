"""Share of the scored tokens that lie beyond a sliding window, from lm-eval logged samples.

A linearized student keeps exact softmax attention only inside a window of ``w`` recent tokens;
scored tokens far into a request depend on its recurrent memory. For each task this counts the
scored (continuation) tokens whose absolute position in the tokenised request is ``>= w``.

Positions are those of the sequence the harness feeds the model (lm-eval's ``HFLM``):

* loglikelihood requests ``(context, continuation)``: ``context + continuation`` encoded as
  ``HFLM._encode_pair`` does (trailing blanks of the context moved to the continuation, the BOS
  included when the tokenizer adds one, an empty context replaced by the prefix token), truncated
  from the left to ``max_length + 1`` tokens as ``HFLM._loglikelihood_tokens`` does; position 0 is
  the first token of that sequence;
* loglikelihood_rolling requests (perplexity tasks): every token is scored, in the rolling windows
  of ``lm_eval.utils.get_rolling_token_windows`` (prefix token, ``max_length``); a token's position
  is its place in its own window.

Convention: the token at position ``p`` is predicted from the ``p`` tokens before it, so ``p >= w``
means "at least ``w`` tokens of context". With the window of :mod:`linearize.attention.window`
(query ``i`` sees keys ``i - w < j <= i``) the prediction of position ``p`` still sees all of its
context when ``p == w``; the first position that really misses a token is ``w + 1``.

Each distinct string is tokenised once (contexts are shared by the choices of an item).
"""
from __future__ import annotations

from collections.abc import Iterable


def move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's ``_encode_pair``: trailing whitespace of the context starts the continuation instead."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


class RequestPositions:
    """Positions of scored tokens in the sequences an lm-eval model feeds itself.

    lm: anything with lm-eval's ``tok_encode(string, add_special_tokens=None)``, ``prefix_token_id``
    and ``max_length`` (an ``HFLM`` / ``LinearizedLM``).
    """

    def __init__(self, lm):
        self.lm = lm
        self.max_length = int(lm.max_length)
        self.prefix = lm.prefix_token_id
        self._cache: dict[tuple[str, bool | None], list[int]] = {}

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        key = (text, add_special_tokens)
        ids = self._cache.get(key)
        if ids is None:
            ids = self._cache[key] = list(self.lm.tok_encode(text) if add_special_tokens is None
                                          else self.lm.tok_encode(text, add_special_tokens=add_special_tokens))
        return ids

    def pair(self, context: str, continuation: str) -> tuple[int, int]:
        """``(first position, number)`` of the scored tokens of a loglikelihood request."""
        if context == "":  # HFLM.loglikelihood: the prefix token stands in for an empty context
            cont = self.encode(continuation, add_special_tokens=False)
            n_ctx, n_cont = (1, len(cont)) if self.prefix != cont[0] else (1, len(cont) - 1)
        else:  # HFLM._encode_pair (causal)
            context, continuation = move_trailing_space(context, continuation)
            whole = self.encode(context + continuation)
            n_ctx = len(self.encode(context))
            n_cont = len(whole) - n_ctx
        start = max(0, n_ctx + n_cont - (self.max_length + 1))  # left truncation
        return n_ctx - start, n_cont

    def rolling(self, text: str) -> list[tuple[int, int]]:
        """``(first position, number)`` of the scored tokens in each rolling window of a document."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows = map(make_disjoint_window, get_rolling_token_windows(
            token_list=self.encode(text), prefix_token=self.prefix, max_seq_len=self.max_length, context_len=1))
        out = []
        for ctx, cont in windows:
            start = max(0, len(ctx) + len(cont) - (self.max_length + 1))
            out.append((len(ctx) - start, len(cont)))
        return out


def _beyond(first: int, n: int, window: int) -> int:
    """How many of the positions first .. first + n - 1 are >= window."""
    return max(0, first + n - max(first, window))


def logged_requests(arguments) -> list[tuple[str, ...]]:
    """The requests of one logged sample: ``[(context, continuation), ...]`` or ``[(text,), ...]``.

    lm-eval 0.4.x logs ``[[ctx, cont], ...]`` / ``[[text]]``; newer versions log
    ``{"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}``: both are accepted.
    """
    if isinstance(arguments, dict):
        arguments = list(arguments.values())
    out = []
    for req in arguments:
        if isinstance(req, dict):
            req = list(req.values())
        if isinstance(req, str):
            req = (req,)
        out.append(tuple(req))
    return out


def beyond_window_share(samples: Iterable[dict], lm, window: int) -> dict:
    """Share of scored tokens at positions ``>= window`` over lm-eval logged samples of one task.

    samples: ``results["samples"][task]`` (or several tasks' lists chained) from
    ``simple_evaluate(..., log_samples=True)``; lm: the lm-eval model that scored them (or a
    :class:`RequestPositions`). Returns ``{"window", "scored_tokens", "beyond_tokens", "share"}``
    (share in [0, 1]; None when nothing was scored).
    """
    pos = lm if isinstance(lm, RequestPositions) else RequestPositions(lm)
    scored = beyond = 0
    for sample in samples:
        for req in logged_requests(sample["arguments"]):
            spans = pos.rolling(req[0]) if len(req) == 1 else [pos.pair(req[0], req[1])]
            for first, n in spans:
                scored += n
                beyond += _beyond(first, n, window)
    return {"window": int(window), "scored_tokens": scored, "beyond_tokens": beyond,
            "share": beyond / scored if scored else None}


def student_window(checkpoint: str, default: int = 64) -> tuple[int, str]:
    """The sliding window of a converted checkpoint (``config.json`` -> ``linearize.window``).

    Returns ``(window, where it came from)``; ``(default, "default")`` for checkpoints without a
    ``linearize`` section (plain models, ``.gguf`` files, aliases, hub ids).
    """
    import json
    import os

    from linearize.loading import resolve_checkpoint

    try:
        ref = resolve_checkpoint(checkpoint)
    except FileNotFoundError:
        return default, "default"
    cfg_path = os.path.join(ref.path, "config.json")
    if ref.gguf_file or not os.path.isfile(cfg_path):
        return default, "default"
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    window = (cfg.get("linearize") or {}).get("window")
    if window is None:
        return default, "default"
    return int(window), f"{cfg_path}: linearize.window"
