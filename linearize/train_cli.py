"""Command-line sub-commands of the two-stage training pipeline.

    python -m linearize distill  RECIPE [--key=value ...] [--resume]   stage 1 only
    python -m linearize finetune RECIPE [--key=value ...] [--resume]   stage 2 (needs stage 1's output)
    python -m linearize run      RECIPE [--key=value ...] [--resume]   convert -> distill -> finetune
                                                                       -> save -> eval report
    python -m linearize merge    RECIPE [--key=value ...]              <output_dir>/merged from the
                                                                       stage-1 parameters + adapter

Overrides are dotted recipe keys (``--distill.lr=1e-3 --data.seq_len=512``); an unknown key is
refused with the nearest valid one. The resolved recipe is saved as ``<output_dir>/recipe.yaml``.
Several processes: ``accelerate launch --config_file recipes/accelerate/ddp.yaml -m linearize run
RECIPE`` (GPUs, DDP or FSDP: recipes/accelerate/README.md) or ``torchrun --nproc_per_node N -m
linearize.train_cli run RECIPE`` (CPU, gloo). The recipe's global batch is kept whatever N is.

``add_train_parsers(subparsers)`` plugs these into the main ``linearize`` CLI.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .recipes import TINY_RANDOM_LLAMA, RecipeError, RunConfig, load_recipe, save_recipe

# `python -m linearize run` with no recipe: SmolLM2-135M, CPU-sized (see the README's quick start)
DEFAULT_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.yaml")

# what each command does, for its --help
HELP = {
    "distill": "stage 1: attention transfer (train only the new linear-attention parameters)",
    "finetune": "stage 2: LoRA fine-tuning of the linearized model (loads stage 1's parameters)",
    "run": "convert -> distill -> finetune -> save, then the eval report if the recipe lists tasks",
    "merge": "rebuild <output_dir>/merged from distill/linear_attention.pt and adapter/ (no training)",
}


def add_train_parsers(subparsers) -> None:
    """Add ``distill``, ``finetune``, ``run`` and ``merge`` to an argparse sub-parsers object.

    Recipe overrides are collected by a REMAINDER argument, so the main parser needs no
    ``parse_known_args``; ``args.func(args)`` runs the command and returns an exit code.
    """
    for name, help_ in HELP.items():
        p = subparsers.add_parser(
            name, help=help_, description=help_ + ". Extra --key=value arguments override recipe keys.",
        )
        p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                       help="recipe YAML (see recipes/); default: the embedded quick-start recipe")
        p.add_argument("--resume", action="store_true", help="continue from the stage checkpoints in output_dir")
        p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # stop early (tests)
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key=value recipe overrides")
        p.set_defaults(func=_dispatch, command=name)


def split_own_flags(rest: list[str]) -> tuple[list[str], bool, Optional[int]]:
    """REMAINDER -> (overrides, resume, max_steps): flags after the overrides still count."""
    ov, resume, max_steps = [], False, None
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--resume":
            resume = True
        elif a.startswith("--max-steps"):
            if "=" in a:
                max_steps = int(a.split("=", 1)[1])
            else:
                i += 1
                max_steps = int(rest[i])
        else:
            ov.append(a)
        i += 1
    return ov, resume, max_steps


def parse_args(argv: Optional[list[str]] = None):
    """Standalone parser (``python -m linearize.train_cli run RECIPE ...``)."""
    ap = argparse.ArgumentParser(prog="linearize")
    sub = ap.add_subparsers(dest="command", required=True)
    add_train_parsers(sub)
    return ap.parse_args(argv)


def _dispatch(args) -> int:
    overrides, resume, max_steps = split_own_flags(list(args.overrides or []))
    resume = resume or args.resume
    max_steps = max_steps if max_steps is not None else args.max_steps
    try:
        cfg = load_recipe(args.recipe, overrides)
    except (RecipeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .training import CheckpointMismatchError

    if args.command == "merge":
        from .finetune import merge_from_artifacts

        try:
            _say(f"[merge] merged model -> {merge_from_artifacts(cfg)}")
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    fn = {"distill": cmd_distill, "finetune": cmd_finetune, "run": cmd_run}[args.command]
    try:
        fn(cfg, resume=resume, max_steps=max_steps)
    except CheckpointMismatchError as e:  # refused before any step; the output_dir is as it was
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------ commands


def _setup(cfg: RunConfig, resume: bool = False):
    from .training import load_converted, stage_data

    path = os.path.join(cfg.output_dir, "recipe.yaml")
    if resume:
        check_same_recipe(path, cfg)  # refuse before loading anything, and keep the old recipe.yaml
    if _is_main():
        save_recipe(cfg, path)
    model, tok = load_converted(cfg)
    train, val = stage_data(cfg, tok)
    return model, tok, train, val


def check_same_recipe(path: str, cfg: RunConfig) -> None:
    """``--resume`` into an output_dir written by another recipe: a ``CheckpointMismatchError``
    naming the differing keys (the split of the global batch and logging intervals may change)."""
    from .training import CheckpointMismatchError, identity_diff, recipe_identity, stage_identity

    if not os.path.isfile(path):
        return
    old = load_recipe(path)

    def ident(c: RunConfig) -> dict:
        out = dict(recipe_identity(c, ""))
        for name in ("distill", "finetune"):
            out.update({f"{name}.{k}": v for k, v in stage_identity(getattr(c, name), c.data.seq_len).items()})
        return out

    diff = identity_diff(ident(old), ident(cfg))
    if diff:
        raise CheckpointMismatchError(
            f"--resume: {cfg.output_dir} holds a run of another recipe ({path}); nothing was changed:\n  "
            + "\n  ".join(diff[:8]) + ("\n  ..." if len(diff) > 8 else "")
            + "\nresume with the recipe that wrote it, or use another output_dir"
        )


def cmd_distill(cfg: RunConfig, resume: bool = False, max_steps: Optional[int] = None, _ctx=None):
    from .attention_transfer import distill

    model, tok, train, val = _ctx or _setup(cfg, resume)
    result = distill(model, train, cfg, val_data=val, resume=resume, max_steps=max_steps)
    _say(f"[distill] {result.steps} steps, final loss {result.final_loss:.4g} -> {cfg.output_dir}/distill")
    return model, tok, train, val, result


def cmd_finetune(cfg: RunConfig, resume: bool = False, max_steps: Optional[int] = None, _ctx=None,
                 _stage1_loaded: bool = False):
    from .attention_transfer import ARTIFACT, load_new_params
    from .finetune import finetune

    model, tok, train, val = _ctx or _setup(cfg, resume)
    if not _stage1_loaded:
        load_new_params(model, os.path.join(cfg.output_dir, "distill", ARTIFACT))
    peft_model, result = finetune(model, tok, train, cfg, val_data=val, resume=resume, max_steps=max_steps)
    _say(f"[finetune] {result.steps} steps, final loss {result.final_loss:.4g} -> {cfg.output_dir}")
    return peft_model, result


def cmd_run(cfg: RunConfig, resume: bool = False, max_steps: Optional[int] = None) -> dict:
    """The whole pipeline in one process (the model is loaded and the data tokenised once)."""
    from .training import build_model

    if cfg.eval.tasks and cfg.model.name_or_path == TINY_RANDOM_LLAMA and _is_main():
        # the report loads the teacher by path: give the in-code model one
        teacher_dir = os.path.join(cfg.output_dir, "teacher")
        m, t = build_model(cfg.model, cfg.seed)
        m.save_pretrained(teacher_dir)
        t.save_pretrained(teacher_dir)
    model, tok, train, val, r1 = cmd_distill(cfg, resume=resume, max_steps=max_steps)
    from .recipes import steps_for

    if r1.steps < steps_for(cfg.distill, cfg.data.seq_len):
        _say("[run] stage 1 stopped early; rerun with --resume to continue")
        return {}
    loaded = True
    if r1.final_state is not None:
        # FSDP left stage 1's model wrapped and sharded in place: start stage 2 from a fresh model
        # and the (gathered) stage-1 artifact, as the `finetune` command does
        from .training import load_converted

        model, _ = load_converted(cfg)
        loaded = False
    _, r2 = cmd_finetune(cfg, resume=resume, max_steps=max_steps, _ctx=(model, tok, train, val), _stage1_loaded=loaded)
    if r2.steps < steps_for(cfg.finetune, cfg.data.seq_len):
        _say("[run] stage 2 stopped early; rerun with --resume to continue")
        return {}
    if not cfg.eval.tasks or not _is_main():
        return {}
    return run_eval(cfg)


def teacher_ref(cfg: RunConfig) -> str:
    if cfg.model.name_or_path == TINY_RANDOM_LLAMA:
        return os.path.join(cfg.output_dir, "teacher")
    if cfg.model.gguf_file:
        return os.path.join(cfg.model.name_or_path, cfg.model.gguf_file)
    return cfg.model.name_or_path


def run_eval(cfg: RunConfig) -> dict:
    """Teacher vs merged student through ``linearize.eval.report.run_report`` (another module)."""
    try:
        from .eval.report import run_report
    except ImportError as e:
        print(
            f"[run] eval skipped: linearize.eval.report.run_report is not available ({e}); "
            f"evaluate later with the merged model in {cfg.output_dir}/merged",
            file=sys.stderr,
        )
        return {}
    student = os.path.join(cfg.output_dir, "merged")
    return run_report(
        teacher=teacher_ref(cfg), student=student, tasks=list(cfg.eval.tasks), limit=cfg.eval.limit,
        out_dir=os.path.join(cfg.output_dir, "eval"), probes=list(cfg.eval.probes) or None,
        batch_size=cfg.eval.batch_size,
    )


def _is_main() -> bool:
    from .training import process_state

    return process_state().is_main_process


def _say(msg: str) -> None:
    """Print once per run, not once per process."""
    if _is_main():
        print(msg)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
