"""Which layers to keep as softmax attention: the ones whose heads retrieve.

A linear attention with a 64-token window cannot copy a token it saw 1000 tokens ago (the recall
probes: MQAR and passkey near 0 for every pure student), so a hybrid should keep softmax exactly
where the teacher does that copying. This module measures it on the teacher, before any training,
in the spirit of "retrieval heads" (Wu et al. 2024):

    score[l, h] = mean over answer tokens a_i of  sum_{j in src(a_i)} A[l, h, p_i, j]

where p_i is the position whose logits predict a_i (the recall probes' teacher-forced answers),
src(a_i) the earlier positions holding the same token at the same offset of an earlier copy of the
whole answer (the MQAR value line, the passkey needle), and A the teacher's attention weights.
A layer's score is its best head's; the top ``k`` layers stay softmax.

    python -m linearize.layer_selection --model smollm2-135m --k 3 [--length 1024 --samples 8]
"""
from __future__ import annotations

import argparse
import json
import random

import torch


def copy_sources(ids: list[int], positions: list[int], answer: list[int]) -> list[list[int]]:
    """For each answer token i (predicted at positions[i]): the positions of token answer[i] inside
    every earlier full copy of ``answer`` (that ends before the answer itself starts)."""
    n, start = len(answer), positions[0] + 1
    starts = [s for s in range(0, start - n + 1) if ids[s:s + n] == answer]
    return [[s + i for s in starts] for i in range(n)]


@torch.no_grad()
def retrieval_scores(model, samples) -> torch.Tensor:
    """[layers, heads] mean attention mass from each answer position onto the token it must copy.

    model: a softmax (unconverted) causal LM loaded with ``attn_implementation="eager"`` (the
    attention weights are needed); samples: :class:`linearize.eval.probes.ProbeSample` list.
    Answer tokens without an earlier copy are skipped; an error if none has one.
    """
    device = next(model.parameters()).device
    total, count = None, 0
    for sample in samples:
        targets = []  # (query position, source positions)
        for positions, answer in sample.answers:
            for p, src in zip(positions, copy_sources(sample.input_ids, positions, answer)):
                if src:
                    targets.append((p, src))
        if not targets:
            continue
        ids = torch.tensor([sample.input_ids], device=device)
        att = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
        if att is None or att[0] is None:
            raise ValueError("the model returned no attention weights: load it with attn_implementation='eager'")
        # [layers, heads, T, T] for the one sequence
        att = torch.stack([a[0].float() for a in att])
        mass = torch.stack([att[:, :, p, src].sum(-1) for p, src in targets]).sum(0)
        total = mass if total is None else total + mass
        count += len(targets)
    if count == 0:
        raise ValueError("no answer token has an earlier copy in its sample: nothing to measure retrieval on")
    return total / count


def choose_softmax_layers(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` layers whose best head scores highest, ascending. scores: [layers, heads]."""
    if not 0 <= k <= scores.shape[0]:
        raise ValueError(f"k={k} softmax layers asked of a {scores.shape[0]}-layer model")
    best = scores.max(dim=1).values
    return sorted(best.topk(k).indices.tolist())


def probe_samples(tokenizer, length: int, samples: int, seed: int = 0, num_queries: int = 16):
    """``samples`` MQAR and ``samples`` passkey sequences of ``length`` tokens (passkey depths spread)."""
    from linearize.eval.probes import make_mqar, make_passkey

    rng = random.Random(seed)
    out = [make_mqar(tokenizer, length, num_queries, rng) for _ in range(samples)]
    out += [make_passkey(tokenizer, length, (i + 0.5) / samples, rng) for i in range(samples)]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m linearize.layer_selection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the teacher: dir, hub id, .gguf or alias")
    ap.add_argument("--k", type=int, default=3, help="layers to keep as softmax")
    ap.add_argument("--length", type=int, default=1024, help="probe length in tokens")
    ap.add_argument("--samples", type=int, default=8, help="sequences per probe")
    ap.add_argument("--seed", type=int, default=1,
                    help="probe seed (the harness scores its recall probes with seed 0: keep them apart)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write scores and the chosen layers here")
    args = ap.parse_args(argv)

    from linearize.loading import load_model

    model, tok = load_model(args.model, dtype="float32", device=args.device)
    model.config._attn_implementation = "eager"  # the attention weights themselves are needed
    model.eval()
    scores = retrieval_scores(model, probe_samples(tok, args.length, args.samples, args.seed))
    layers = choose_softmax_layers(scores, args.k)
    best = scores.max(dim=1).values
    for layer in range(scores.shape[0]):
        mark = "  <- softmax" if layer in layers else ""
        print(f"layer {layer:3d}  best head {int(scores[layer].argmax()):2d}  retrieval {best[layer]:.3f}{mark}")
    print(f"softmax_layers: {layers}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "length": args.length, "samples": args.samples, "seed": args.seed,
                       "k": args.k, "softmax_layers": layers, "scores": scores.tolist()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
