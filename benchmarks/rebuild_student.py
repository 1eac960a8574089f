"""Rebuild a run's merged student from its small artifacts, on a machine that never trained it.

    python benchmarks/rebuild_student.py RECIPE RUN_DIR [--key=value overrides]

RUN_DIR must hold ``distill/linear_attention.pt`` (stage 1's new parameters) and ``adapter/``
(stage 2's PEFT adapter); writes ``RUN_DIR/merged`` exactly as ``linearize run`` does: the teacher
converted with the recipe, the stage-1 parameters loaded, the adapter merged in.
"""
import os
import sys

from peft import PeftModel

from linearize.attention_transfer import ARTIFACT, load_new_params
from linearize.recipes import load_recipe
from linearize.training import load_converted


def main(argv):
    recipe, run_dir, overrides = argv[0], argv[1], argv[2:]
    cfg = load_recipe(recipe, overrides)
    model, tok = load_converted(cfg)
    load_new_params(model, os.path.join(run_dir, "distill", ARTIFACT))
    merged = PeftModel.from_pretrained(model, os.path.join(run_dir, "adapter")).merge_and_unload()
    out = os.path.join(run_dir, "merged")
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"merged student -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
