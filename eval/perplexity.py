"""Perplexity from lm-eval ``loglikelihood_rolling`` results: word, byte and token level.

lm-eval's rolling loglikelihood gives, per document, the summed log-probability of every token of
the document (each token conditioned on all earlier ones, windowed at the model's max length).

* word perplexity  = exp(-sum(loglik) / sum(words))   (lm-eval's ``word_perplexity``)
* token perplexity = exp(-sum(loglik) / sum(tokens))  (tokens: the model's own tokenisation of the
  scored string, without special tokens; computed here from logged samples)
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .window_share import logged_requests


def process_results(doc: dict, results: list[float]) -> dict:
    """lm-eval ``process_results`` for plain text pages: (loglik, n) pairs for weighted perplexity."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"].strip()))
    nbytes = len(doc["page"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }


def token_perplexity(samples: Iterable[dict], tokenizer) -> float:
    """exp(-sum loglik / sum tokens) over lm-eval logged samples of a rolling-loglikelihood task.

    samples: ``results["samples"][task]`` from ``simple_evaluate(..., log_samples=True)``; each has
    ``arguments`` (the scored string is the first argument) and ``resps`` ([[loglik]]).
    tokenizer: the lm-eval model itself (its ``tok_encode`` is what rolling loglikelihood scored)
    or an HF tokenizer (then encoded without special tokens).
    """
    encode = getattr(tokenizer, "tok_encode", None) or (
        lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    total_ll, total_tokens = 0.0, 0
    for s in samples:
        args = s["arguments"]
        text = logged_requests(args)[0][0]  # the scored string
        ll = s["resps"][0][0]
        ll = ll[0] if isinstance(ll, (list, tuple)) else ll
        total_ll += float(ll)
        total_tokens += len(encode(text))
    if total_tokens == 0:
        return float("nan")
    return math.exp(-total_ll / total_tokens)
