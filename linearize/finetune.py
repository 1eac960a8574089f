"""Stage 2, fine-tuning: LoRA on the linearized model to close the remaining quality gap.

    loss = lm_weight * CE(next token)
         + distill_weight * T^2 * KL(teacher || student)   (optional, on next-token logits)

The teacher is the same model with its adapter disabled and every attention in mode "teacher"
(the original softmax attention from the same, LoRA-free q/k/v/o weights): no second model in
memory. LoRA (PEFT, default r=8 alpha=16 on q/k/v/o) is the only thing that trains unless
``train_new_params`` also unfreezes the stage-1 parameters.

Writes ``<output_dir>/finetune/`` (metrics, loss.png, checkpoint), ``<output_dir>/adapter/``
(PEFT ``save_pretrained``) and ``<output_dir>/merged/`` (``merge_and_unload`` then
``save_pretrained``, plus the tokenizer).
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Optional

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX
from .recipes import FinetuneConfig, RunConfig, steps_for
from .training import TrainResult, train


def add_lora(model: torch.nn.Module, cfg: FinetuneConfig):
    """Wrap ``model`` in a PEFT LoRA model (freezes everything but the adapter)."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lcfg)
    if cfg.train_new_params:
        from . import new_parameters

        for _, p in new_parameters(peft_model.get_base_model()):
            p.requires_grad_(True)
    return peft_model


def kd_loss(student_logits, teacher_logits, labels, temperature: float = 1.0):
    """T^2 * KL(teacher || student) per predicted token, averaged over positions with a label.

    logits: [B, T, V] (position t predicts token t+1); labels: [B, T] (IGNORE_INDEX = no loss).
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    s = student_logits[:, :-1][mask].float() / temperature  # [N, V]
    t = teacher_logits[:, :-1][mask].float() / temperature
    if s.numel() == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def make_finetune_loss(peft_model, cfg: FinetuneConfig):
    """loss_fn(model, batch) -> (loss, {"lm_loss", "kd_loss"}).

    ``peft_model`` is the unwrapped PeftModel (the teacher pass needs ``disable_adapter``); the
    ``model`` argument may be its DDP wrapper and carries the gradient pass.
    """
    from .surgery import attention_mode

    def loss_fn(model, batch):
        extras = {}
        teacher_logits = None
        if cfg.distill_weight > 0:
            with ExitStack() as st, torch.no_grad():
                st.enter_context(peft_model.disable_adapter())
                st.enter_context(attention_mode(peft_model.get_base_model(), "teacher"))
                teacher_logits = peft_model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                ).logits
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], use_cache=False
        )
        loss = cfg.lm_weight * out.loss
        extras["lm_loss"] = float(out.loss.detach())
        if teacher_logits is not None:
            kd = kd_loss(out.logits, teacher_logits, batch["labels"], cfg.distill_temperature)
            loss = loss + cfg.distill_weight * kd
            extras["kd_loss"] = float(kd.detach())
        return loss, extras

    return loss_fn


def finetune(
    model: torch.nn.Module,
    tokenizer,
    train_data,
    cfg: RunConfig,
    *,
    val_data=None,
    resume: bool = False,
    max_steps: Optional[int] = None,
    progress: bool = True,
    save: bool = True,
) -> tuple[torch.nn.Module, TrainResult]:
    """Stage 2 on a converted (and stage-1-trained) ``model``.

    Returns (peft_model, result); when the stage finished and ``save``, the adapter and the
    merged model are written (merging folds LoRA into the weights of ``model`` in place, so the
    returned PeftModel is then only good for inspection).
    """
    from .surgery import set_mode

    set_mode(model, "student")
    peft_model = add_lora(model, cfg.finetune)
    run_dir = os.path.join(cfg.output_dir, "finetune")
    result = train(
        peft_model, make_finetune_loss(peft_model, cfg.finetune), train_data, cfg.finetune, run_dir,
        val_data=val_data, seed=cfg.seed, resume=resume, stage="finetune", max_steps=max_steps, progress=progress,
    )
    world = _world()
    finished = result.steps >= steps_for(cfg.finetune, train_data.seq_len, world)
    if save and finished and _is_main():
        save_outputs(peft_model, tokenizer, cfg)
    return peft_model, result


def save_outputs(peft_model, tokenizer, cfg: RunConfig) -> dict[str, str]:
    """Adapter the PEFT way; merged model via ``merge_and_unload`` + ``save_pretrained``."""
    paths = {"adapter": os.path.join(cfg.output_dir, "adapter")}
    peft_model.save_pretrained(paths["adapter"])
    if cfg.finetune.save_merged:
        paths["merged"] = os.path.join(cfg.output_dir, "merged")
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(paths["merged"])
        if tokenizer is not None:
            tokenizer.save_pretrained(paths["merged"])
    return paths


def _world() -> int:
    try:
        from accelerate.state import PartialState

        return PartialState().num_processes
    except Exception:  # noqa: BLE001
        return 1


def _is_main() -> bool:
    try:
        from accelerate.state import PartialState

        return PartialState().is_main_process
    except Exception:  # noqa: BLE001
        return True
