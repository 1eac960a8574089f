"""Synthetic recall probes: multi-query associative recall (MQAR) and passkey retrieval.

Both build token sequences of a target length, run ONE forward pass per sample, and score
teacher-forced exact match: a query counts as correct when the model's argmax at every answer
position equals the answer token (what greedy decoding of the answer would produce).

* MQAR: the context is filled with ``KEY: VALUE`` lines (random 6-letter keys, 4-digit values)
  up to the target length, then ``num_queries`` of those keys are asked again (``KEY:`` -> value).
  More pairs at longer contexts, as in Zoology's MQAR: it measures associative memory capacity.
* Passkey: a 5-digit pass key is hidden at depths spread over [0, 1] inside repeated filler
  text; the question at the end asks for it (Mohtashami & Jaggi 2023 format).

Deterministic for a given seed (``random.Random(seed)``, no torch randomness).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

import torch

PROBES = ("mqar", "passkey")


@dataclass
class ProbeConfig:
    """lengths: context lengths in tokens; num_samples: sequences per length (and probe);
    num_queries: MQAR queries per sequence; probes: which of ``PROBES`` to run."""

    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    num_samples: int = 8
    num_queries: int = 16
    seed: int = 0
    probes: list[str] = field(default_factory=lambda: list(PROBES))

    def __post_init__(self):
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; known: {', '.join(PROBES)}")
        if not self.lengths or min(self.lengths) < 32:
            raise ValueError(f"probe lengths must be >= 32 tokens, got {self.lengths}")


@dataclass
class ProbeSample:
    """input_ids: [T] token ids; answers: list of (positions [k], token ids [k]) per query.

    positions index the token whose logits predict the answer token (i.e. answer index - 1).
    """

    input_ids: list[int]
    answers: list[tuple[list[int], list[int]]]


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _bos(tok) -> list[int]:
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def _with_answer(ids: list[int], answers: list, prompt: list[int], answer: list[int], suffix: list[int]) -> None:
    """Append prompt + answer + suffix to ids, recording where the answer must be predicted."""
    ids.extend(prompt)
    start = len(ids)
    ids.extend(answer)
    answers.append(([start - 1 + i for i in range(len(answer))], list(answer)))
    ids.extend(suffix)


def make_mqar(tok, length: int, num_queries: int, rng: random.Random) -> ProbeSample:
    """One MQAR sequence of at most ``length`` tokens: as many pairs as fit, then the queries."""
    head = _bos(tok) + _enc(tok, "Remember the number that follows each code.\n")
    tail = _enc(tok, "Now recall the numbers.\n")
    newline = _enc(tok, "\n")
    pairs: list[tuple[list[int], list[int]]] = []  # (ids of "KEY:", ids of " VALUE")
    used: set[str] = set()
    body: list[int] = []
    longest = 0
    while True:
        key = "".join(rng.choice(string.ascii_uppercase) for _ in range(6))
        if key in used:
            continue
        used.add(key)
        k, v = _enc(tok, f"{key}:"), _enc(tok, f" {rng.randint(1000, 9999)}")
        line = k + v + newline
        longest = max(longest, len(line))
        queries = min(num_queries, len(pairs) + 1)
        if pairs and len(head) + len(body) + len(line) + len(tail) + queries * longest > length:
            break
        pairs.append((k, v))
        body.extend(line)
    ids, answers = head + body + tail, []
    for i in rng.sample(range(len(pairs)), min(num_queries, len(pairs))):
        _with_answer(ids, answers, pairs[i][0], pairs[i][1], newline)
    return ProbeSample(ids, answers)


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def make_passkey(tok, length: int, depth: float, rng: random.Random) -> ProbeSample:
    """One passkey sequence of about ``length`` tokens with the key at relative ``depth`` in [0, 1]."""
    key = str(rng.randint(10000, 99999))
    head = _bos(tok) + _enc(tok, "There is important information hidden inside a lot of irrelevant text. "
                                 "Find it and memorize it. I will quiz you about it.\n")
    needle = _enc(tok, f" The pass key is {key}. Remember it. {key} is the pass key. ")
    question = _enc(tok, "\nWhat is the pass key? The pass key is")
    answer = _enc(tok, f" {key}")
    filler_unit = _enc(tok, FILLER)
    n_filler = max(0, length - len(head) - len(needle) - len(question) - len(answer))
    filler = (filler_unit * (n_filler // len(filler_unit) + 1))[:n_filler]
    cut = int(round(depth * len(filler)))
    ids = head + filler[:cut] + needle + filler[cut:]
    answers: list = []
    _with_answer(ids, answers, question, answer, [])
    return ProbeSample(ids, answers)


@torch.no_grad()
def logits_at(model, input_ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Logits [len(positions), V] for one sequence ``input_ids`` [1, T], without the full [T, V] matrix.

    Runs the decoder (``model.get_decoder()``) and applies the output head to the chosen positions
    only; falls back to a full forward for models without that split.
    """
    pos = torch.tensor(positions, device=input_ids.device)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is not None and head is not None and decoder is not model:
        out = decoder(input_ids=input_ids, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return head(hidden[0, pos]).float()
    return model(input_ids=input_ids, use_cache=False).logits[0, pos].float()


def score_sample(model, sample: ProbeSample, device) -> list[bool]:
    """Per-query exact match for one sample."""
    if not sample.answers:
        return []
    ids = torch.tensor([sample.input_ids], device=device)
    flat = [p for pos, _ in sample.answers for p in pos]
    pred = logits_at(model, ids, flat).argmax(-1).tolist()
    out, i = [], 0
    for pos, tgt in sample.answers:
        out.append(pred[i : i + len(pos)] == tgt)
        i += len(pos)
    return out


def run_probes(model, tokenizer, config: ProbeConfig | None = None, device=None) -> dict[str, dict[int, float]]:
    """Accuracy per probe and context length: ``{"mqar": {1024: 0.93, ...}, "passkey": {...}}``.

    model: a causal LM (HF ``PreTrainedModel``); tokenizer: its tokenizer. Each (probe, length)
    uses its own ``random.Random(seed, probe, length)`` stream, so adding lengths does not change
    the others' samples.
    """
    config = config or ProbeConfig()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: dict[str, dict[int, float]] = {}
    for probe in config.probes:
        results[probe] = {}
        for length in config.lengths:
            rng = random.Random(f"{config.seed}-{probe}-{length}")
            hits: list[bool] = []
            for s in range(config.num_samples):
                if probe == "mqar":
                    sample = make_mqar(tokenizer, length, config.num_queries, rng)
                else:
                    depth = s / max(config.num_samples - 1, 1)
                    sample = make_passkey(tokenizer, length, depth, rng)
                hits.extend(score_sample(model, sample, device))
            results[probe][int(length)] = sum(hits) / len(hits) if hits else float("nan")
    model.train(was_training)
    return results
