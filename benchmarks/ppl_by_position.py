"""Where in a long context does a student lose to its teacher? Token perplexity by position range.

    python benchmarks/ppl_by_position.py STUDENT_DIR TOKENS.npy [--teacher smollm2-135m]
        [--context 4096] [--blocks 6] [--json out.json]

Scores ``blocks`` non-overlapping blocks of ``context`` tokens from a uint16/int token file with
both models (fp32, CPU is fine) and prints perplexity over position ranges (0-64, 64-256, 256-512,
512-1024, then every 1024), the student/teacher ratio per range. A ratio that grows only past the training length
points at length generalisation; one that is high from the window's edge on points at memory.
"""
import argparse
import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM

import linearize  # noqa: F401  (registers the Linearized* classes)
from linearize.loading import load_model


def nll_by_position(model, ids: torch.Tensor) -> torch.Tensor:
    """ids: [blocks, T] -> mean next-token NLL per position [T - 1] over the blocks."""
    out = []
    with torch.no_grad():
        for row in ids:
            logits = model(row[None]).logits[0, :-1].float()
            out.append(torch.nn.functional.cross_entropy(logits, row[1:], reduction="none"))
    return torch.stack(out).mean(0)


def edges_for(T: int) -> list[int]:
    """Range edges: 0, 64 (the window), 256, 512, 1024, then every 1024, and T - 1."""
    edges = [e for e in (0, 64, 256, 512) if e < T - 1] + list(range(1024, T - 1, 1024))
    return edges + [T - 1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student")
    ap.add_argument("tokens")
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    flat = np.load(a.tokens)
    if flat.size < a.blocks * a.context:
        raise SystemExit(f"{a.tokens}: {flat.size} tokens, fewer than {a.blocks} x {a.context}")
    ids = torch.from_numpy(flat[:a.blocks * a.context].astype(np.int64)).view(a.blocks, a.context)
    teacher, _ = load_model(a.teacher, dtype=torch.float32)
    t = nll_by_position(teacher.eval(), ids)
    del teacher
    s = nll_by_position(AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32).eval(), ids)
    rows = []
    edges = edges_for(a.context)
    for lo, hi in zip(edges[:-1], edges[1:]):
        pt, ps = t[lo:hi].mean().exp().item(), s[lo:hi].mean().exp().item()
        rows.append({"positions": [lo, hi], "teacher_ppl": pt, "student_ppl": ps, "ratio": ps / pt})
        print(f"positions {lo:5d}-{hi:5d}: teacher {pt:7.2f}  student {ps:7.2f}  student/teacher {ps / pt:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"student": a.student, "teacher": a.teacher, "tokens": a.tokens, "context": a.context,
                       "blocks": a.blocks, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
