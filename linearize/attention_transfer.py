"""Stage 1, attention transfer: train only the new parameters so each linear attention mimics
the softmax attention it replaced.

Every ``LinearizedAttention`` runs in mode "transfer": it computes the teacher (softmax) output
under no_grad and its own (student) output from the same q/k/v, stores
``transfer_loss`` = MSE(student, teacher) after o_proj (+ optional attention-weight CE), and
passes the teacher's output on, so layer l+1 sees the hidden states the original model would.

    loss = sum over linearized layers of transfer_loss_l

Only ``linearize.new_parameters(model)`` train (feature maps, gates, meta tokens, mixing
factors); q/k/v/o, MLPs and embeddings are frozen. Per-layer losses go to ``metrics.jsonl`` as
``layer_<i>``.

Artifact: ``<output_dir>/distill/linear_attention.pt`` = {name: tensor} of the new parameters,
which stage 2 (``linearize.finetune``) loads into a freshly converted model.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import torch

from .recipes import RunConfig
from .training import TrainResult, atomic_save, load_trainable, recipe_identity, train

ARTIFACT = "linear_attention.pt"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def linear_attentions(model: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
    """[(layer index, LinearizedAttention)] in layer order (softmax-kept layers are not in it)."""
    from .attention.base import LinearizedAttention

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, LinearizedAttention):
            m = _LAYER_RE.search(name + ".")
            out.append((int(m.group(1)) if m else getattr(mod, "layer_idx", len(out)), mod))
    return sorted(out, key=lambda t: t[0])


def freeze_all_but_new(model: torch.nn.Module) -> list[str]:
    """requires_grad only on ``new_parameters(model)``; returns their names."""
    from . import new_parameters

    new = new_parameters(model)
    if not new:
        raise ValueError("the model has no new parameters: was it converted (linearize.convert)?")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in new:
        p.requires_grad_(True)
    return [n for n, _ in new]


def make_transfer_loss(attns: list[tuple[int, torch.nn.Module]]):
    """loss_fn(model, batch) -> (sum of per-layer transfer losses, {"layer_i": loss_i (0-d tensor)})."""

    def loss_fn(model, batch):
        for _, a in attns:
            a.transfer_loss = None
        # logits_to_keep=1: the LM head's output is unused here, skip most of its cost
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=1)
        losses = []
        for i, a in attns:
            if a.transfer_loss is None:
                raise RuntimeError(f"layer {i} produced no transfer_loss: is it in mode 'transfer'?")
            losses.append(a.transfer_loss)
        total = torch.stack(losses).sum()
        # tensors, not floats: a float() here would stall the host on the GPU between forward and backward
        return total, {f"layer_{i}": l.detach() for (i, _), l in zip(attns, losses)}

    return loss_fn


def save_new_params(model: torch.nn.Module, path: str) -> None:
    from . import new_parameters

    atomic_save({n: p.detach().cpu().clone() for n, p in new_parameters(model)}, path)


def load_new_params(model: torch.nn.Module, path: str) -> None:
    """Load a stage-1 artifact into a converted model (names must match the conversion)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"stage-1 parameters not found: {path} (run `distill` first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_trainable(model, state)


def distill(
    model: torch.nn.Module,
    train_data,
    cfg: RunConfig,
    *,
    val_data=None,
    resume: bool = False,
    max_steps: Optional[int] = None,
    progress: bool = True,
) -> TrainResult:
    """Run stage 1 on a converted ``model``; writes ``<output_dir>/distill/`` and the artifact.

    The model is left in mode "student" with the trained feature maps / gates in place (under
    FSDP its layers are left wrapped and sharded: stage 2 must start from a fresh model and the
    artifact, which ``train_cli.cmd_run`` does). Only the main process writes the artifact; every
    process returns after it is on disk.
    """
    from . import new_parameters
    from .recipes import steps_for
    from .surgery import set_mode

    run_dir = os.path.join(cfg.output_dir, "distill")
    freeze_all_but_new(model)
    names = [n for n, _ in new_parameters(model)]  # before any wrapping renames them
    attns = linear_attentions(model)
    for _, a in attns:
        a.transfer_ce_weight = cfg.distill.transfer_ce_weight
    set_mode(model, "transfer")
    try:
        result = train(
            model, make_transfer_loss(attns), train_data, cfg.distill, run_dir,
            val_data=val_data, seed=cfg.seed, resume=resume, stage="distill",
            max_steps=max_steps, progress=progress, identity=recipe_identity(cfg, "distill"),
        )
    finally:
        set_mode(model, "student")
    if result.steps >= steps_for(cfg.distill, train_data.seq_len) and _is_main():
        path = os.path.join(run_dir, ARTIFACT)
        if result.final_state is not None:  # FSDP: the gathered full tensors, not the shards
            atomic_save({n: result.final_state[n] for n in names}, path)
        else:
            save_new_params(model, path)
    _barrier()  # other processes may load the artifact next
    return result


def _is_main() -> bool:
    from .training import process_state

    return process_state().is_main_process


def _barrier() -> None:
    from .training import process_state

    process_state().wait_for_everyone()
