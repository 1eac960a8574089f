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
import shutil
from contextlib import ExitStack
from typing import Optional

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX
from .lm_loss import lm_loss
from .recipes import FinetuneConfig, RunConfig, steps_for
from .training import TrainResult, recipe_identity, train


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
    for m in peft_model.modules():
        if hasattr(m, "cast_input_dtype_enabled"):
            m.register_forward_pre_hook(_cast_input_unless_autocast)
    if cfg.train_new_params:
        from . import new_parameters

        for _, p in new_parameters(peft_model.get_base_model()):
            p.requires_grad_(True)
    return peft_model


def _cast_input_unless_autocast(module, args) -> None:
    """PEFT casts a LoRA layer's input to the adapter's dtype (fp32) before ``lora_A``. Under autocast
    the matmul casts it straight back to bf16, so that round trip (exact: a bf16 value is an fp32
    one) was two copies of the layer's input per projection, forward and backward alike; without
    autocast the cast stays, since bf16 frozen weights and fp32 adapters then need it."""
    x = args[0] if args else None
    if torch.is_tensor(x):
        module.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)


def _kl_rows(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-position KL(teacher || student) of one slice: s, t [B, n, V] logits -> [B, n] (fp32)."""
    log_s = F.log_softmax(s.float() / temperature, -1)
    log_t = F.log_softmax(t.float() / temperature, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1)


def kd_loss(student_logits, teacher_logits, labels, temperature: float = 1.0, chunk: int = 1024):
    """T^2 * KL(teacher || student) per predicted token, averaged over positions with a label.

    logits: [B, T, V] (position t predicts token t+1); labels: [B, T] (IGNORE_INDEX = no loss).
    Masked by multiplication rather than boolean indexing, so no shape depends on the data and the
    step stays capturable in a CUDA graph; ``chunk`` positions at a time under activation
    checkpointing, because the fp32 log-softmaxes of B x T x V (49K vocab) are several GB each.
    """
    from torch.utils.checkpoint import checkpoint

    weight = (labels[:, 1:] != IGNORE_INDEX).float()  # [B, T-1]
    n = weight.shape[1]
    total = student_logits.new_zeros((), dtype=torch.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        s, t = student_logits[:, a:b], teacher_logits[:, a:b]
        kl = (checkpoint(_kl_rows, s, t, temperature, use_reentrant=False, preserve_rng_state=False)
              if torch.is_grad_enabled() and s.requires_grad else _kl_rows(s, t, temperature))
        total = total + (kl * weight[:, a:b]).sum()
    return total / weight.sum().clamp_min(1.0) * temperature**2


def chunked_head(peft_model, model, cfg: FinetuneConfig):
    """The LM head (an ``nn.Linear`` without bias) when the loss may come from ``linearize.lm_loss``,
    else None: it needs no full logits (no logit distillation), a head PEFT left alone, and the
    head's whole weight outside the forward (not FSDP, whose wrapper shards it)."""
    if not torch.is_grad_enabled():  # evaluation: HF's loss, no gradient work in the forward
        return None
    if not cfg.chunked_lm_loss or cfg.distill_weight > 0:
        return None
    name = type(model).__name__
    if "FullyShardedDataParallel" in name or name.startswith("FSDP"):
        return None
    head = peft_model.get_base_model().get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or type(head.weight) is not torch.nn.Parameter:
        return None
    return head


def make_finetune_loss(peft_model, cfg: FinetuneConfig):
    """loss_fn(model, batch) -> (loss, {"lm_loss", "kd_loss"}).

    ``peft_model`` is the unwrapped PeftModel (``disable_adapter`` and the attention modes switch
    its modules in place); the ``model`` argument may be its DDP/FSDP wrapper and runs both the
    teacher pass (no grad) and the student pass.
    """
    from .surgery import attention_mode

    def loss_fn(model, batch):
        extras = {}
        teacher_logits = None
        if cfg.distill_weight > 0:
            with ExitStack() as st, torch.no_grad():
                st.enter_context(peft_model.disable_adapter())
                st.enter_context(attention_mode(peft_model.get_base_model(), "teacher"))
                teacher_logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
                ).logits
        head = chunked_head(peft_model, model, cfg)
        if head is not None:  # hidden states in, loss out: the [B, T, vocab] logits are never made
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                        output_hidden_states=True, logits_to_keep=1)
            lm = lm_loss(out.hidden_states[-1], head.weight, batch["labels"])
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        use_cache=False)
            lm = out.loss
        loss = cfg.lm_weight * lm
        extras["lm_loss"] = lm.detach()
        if teacher_logits is not None:
            kd = kd_loss(out.logits, teacher_logits, batch["labels"], cfg.distill_temperature)
            loss = loss + cfg.distill_weight * kd
            extras["kd_loss"] = kd.detach()
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
    # LoRA's init is a function of the recipe seed: the same on every rank and for any process
    # count (DDP would broadcast rank 0's anyway, but 1 and N processes must start alike)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        peft_model = add_lora(model, cfg.finetune)
    run_dir = os.path.join(cfg.output_dir, "finetune")
    result = train(
        peft_model, make_finetune_loss(peft_model, cfg.finetune), train_data, cfg.finetune, run_dir,
        val_data=val_data, seed=cfg.seed, resume=resume, stage="finetune", max_steps=max_steps, progress=progress,
        identity=recipe_identity(cfg, "finetune"),
    )
    finished = result.steps >= steps_for(cfg.finetune, train_data.seq_len)
    if save and finished and _is_main():
        if result.final_state is not None:  # FSDP: the wrapped model holds shards; export a rebuilt one
            peft_model = rebuild_peft(cfg, result.final_state)
        save_outputs(peft_model, tokenizer, cfg)
    _barrier()
    return peft_model, result


def rebuild_peft(cfg: RunConfig, trainable: dict[str, torch.Tensor]):
    """A fresh, unwrapped PeftModel of the recipe carrying stage 1's parameters and the trained
    tensors ``trainable`` (full, by PeftModel parameter name): the export path when the trained
    model itself is FSDP-sharded. Main process only; costs one model in CPU memory."""
    from .training import load_trainable

    model, _ = converted_with_stage1(cfg)
    pm = add_lora(model, cfg.finetune)
    load_trainable(pm, trainable)
    return pm


def converted_with_stage1(cfg: RunConfig):
    """(model, tokenizer): the recipe's converted model with stage 1's artifact loaded."""
    from .attention_transfer import ARTIFACT, load_new_params
    from .training import load_converted

    model, tok = load_converted(cfg)
    load_new_params(model, os.path.join(cfg.output_dir, "distill", ARTIFACT))
    return model, tok


def merge_from_artifacts(cfg: RunConfig) -> str:
    """Write ``<output_dir>/merged`` from a finished run's small artifacts alone: the teacher converted
    with the recipe, stage 1's ``distill/linear_attention.pt`` loaded, the PEFT ``adapter/`` merged in.
    For a machine that has the artifacts but not the merged model (hundreds of times their size)."""
    from peft import PeftModel

    adapter = os.path.join(cfg.output_dir, "adapter")
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise FileNotFoundError(f"no PEFT adapter in {adapter} (run `finetune` first)")
    model, tok = converted_with_stage1(cfg)
    return save_merged(PeftModel.from_pretrained(model, adapter), tok, cfg)


def save_merged(peft_model, tokenizer, cfg: RunConfig) -> str:
    """``merge_and_unload`` + ``save_pretrained`` (and the tokenizer) into ``<output_dir>/merged``,
    written beside it and renamed into place, so an interrupted save leaves no half model."""
    out = os.path.join(cfg.output_dir, "merged")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.merge_and_unload().save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def save_outputs(peft_model, tokenizer, cfg: RunConfig) -> dict[str, str]:
    """Adapter the PEFT way; merged model via :func:`save_merged`."""
    paths = {"adapter": os.path.join(cfg.output_dir, "adapter")}
    peft_model.save_pretrained(paths["adapter"])
    if cfg.finetune.save_merged:
        paths["merged"] = save_merged(peft_model, tokenizer, cfg)
    return paths


def _is_main() -> bool:
    from .training import process_state

    return process_state().is_main_process


def _barrier() -> None:
    from .training import process_state

    process_state().wait_for_everyone()
