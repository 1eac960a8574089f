"""The training loop both stages share: Accelerate, accumulation, clipping, cosine LR, checkpoints.

    result = train(model, loss_fn, train_blocks, stage_cfg, run_dir, val_data=val_blocks)

``loss_fn(model, batch) -> (loss, {name: float})`` is the only stage-specific part. The loop

* runs through ``accelerate.Accelerator`` (plain python on CPU, ``accelerate launch`` on 1 GPU,
  DDP or FSDP), with ``mixed_precision`` (bf16 autocast; trainable weights stay fp32) and
  ``gradient_accumulation_steps``;
* trains only the parameters with ``requires_grad`` (the stage sets them);
* is deterministic on CPU for a fixed seed: data order is a pure function of (seed, position),
  and RNG state travels in the checkpoint, so a killed run resumed from its checkpoint reaches the
  same loss at the same step as an uninterrupted one;
* writes ``metrics.jsonl`` (a line per step), ``loss.png`` (at the end), and an atomic
  ``checkpoint.pt`` (written to a temp file, then renamed) of the trainable parameters,
  optimizer, scheduler, RNG and data position;
* stops on a NaN/inf loss with ``NonFiniteLossError`` naming the step, leaving the last good
  checkpoint untouched.

Also here: ``build_model`` (a recipe's ModelConfig -> model + tokenizer, including the special
``tiny-random-llama``) because both stages and the CLI start from it.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .recipes import TINY_RANDOM_LLAMA, ModelConfig, StageConfig, steps_for

LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; ``step`` is where, the last good checkpoint is kept."""

    def __init__(self, step: int, value: float, checkpoint: Optional[str]):
        self.step, self.value, self.checkpoint = step, value, checkpoint
        kept = f"; last good checkpoint kept: {checkpoint}" if checkpoint else "; no checkpoint had been written"
        super().__init__(f"non-finite loss ({value}) at step {step}: training stopped{kept}")


# ------------------------------------------------------------------ models


def byte_tokenizer():
    """A byte-level fast tokenizer (256 byte tokens + <|endoftext|>) built in code, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.name_or_path = "byte-level"
    return tok


def tiny_random_llama(seed: int = 0, layers: int = 2, hidden: int = 64, max_positions: int = 512):
    """(model, tokenizer): a seeded random 2-layer LlamaForCausalLM over byte tokens, for smoke tests.

    ``initializer_range`` is larger than Llama's 0.02 so attention is peaked rather than uniform:
    attention transfer then has something to learn.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=max_positions,
        initializer_range=0.1,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    return model, tok


def build_model(mcfg: ModelConfig, seed: int = 0):
    """A recipe's ModelConfig -> (model, tokenizer); ``tiny-random-llama`` is built in code."""
    if mcfg.name_or_path == TINY_RANDOM_LLAMA:
        model, tok = tiny_random_llama(seed)
        return model.to(getattr(torch, mcfg.dtype)), tok
    from .loading import load_model

    return load_model(mcfg.name_or_path, gguf_file=mcfg.gguf_file, dtype=mcfg.dtype)


# ------------------------------------------------------------------ data order


def micro_batch_indices(n_blocks: int, micro: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """Block indices of this rank's ``micro``-th micro-batch: a pure function of its arguments.

    The stream is epoch after epoch of seeded permutations; every micro-batch takes
    ``batch_size * world`` consecutive entries, rank r its r-th slice; a remainder at an epoch's
    end is skipped so a batch never straddles epochs. Resuming only needs ``micro``.
    """
    per = batch_size * world
    if n_blocks < per:
        raise ValueError(f"{n_blocks} training blocks are fewer than one global micro-batch of {per}")
    per_epoch = n_blocks // per
    epoch, k = divmod(micro, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_blocks)
    start = k * per + rank * batch_size
    return perm[start:start + batch_size]


# ------------------------------------------------------------------ schedule, RNG, checkpoints


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_save(obj, path: str) -> None:
    """torch.save to ``path.tmp`` then rename: a kill leaves the old file or the new, never half."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:  # make the bytes durable before the rename publishes them
        os.fsync(f.fileno())
    os.replace(tmp, path)


def trainable_named(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy saved trainable tensors into ``model`` in place (names must match when strict)."""
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing and strict:
        raise KeyError(f"checkpoint parameters not in the model: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for n, t in state.items():
            if n in params:
                params[n].copy_(t.to(params[n].dtype))


# ------------------------------------------------------------------ metrics + plot


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(metrics_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Training (and held-out) loss against step -> PNG; returns the path or None without data."""
    rows = read_metrics(metrics_path)
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not tr and not va:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="held-out", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, v in tr + va):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# ------------------------------------------------------------------ accelerator


def make_accelerator(mixed_precision: str, grad_accum: int):
    """An Accelerator for one stage; a stage with another precision resets the shared state
    (Accelerate keeps it process-wide) but keeps the process group."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    st = AcceleratorState._shared_state
    if st and st.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    """What a stage ended with; ``history`` holds the metrics lines of this process's steps."""

    steps: int
    final_loss: float
    run_dir: str
    checkpoint: str
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_data,
    cfg: StageConfig,
    run_dir: str,
    *,
    val_data=None,
    seed: int = 0,
    resume: bool = False,
    stage: str = "stage",
    max_steps: Optional[int] = None,
    accelerator=None,
    progress: bool = True,
) -> TrainResult:
    """Optimise the ``requires_grad`` parameters of ``model`` on ``loss_fn`` over ``train_data``.

    train_data / val_data: ``linearize.data.BlockDataset`` (``batch(indices)`` -> tensors [B, L]).
    max_steps: stop after this many steps (a simulated kill in tests); the schedule still spans
    ``cfg``'s full length so a resumed run continues the same curve.
    """
    os.makedirs(run_dir, exist_ok=True)
    acc = accelerator or make_accelerator(cfg.mixed_precision, cfg.grad_accum)
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    metrics_path = os.path.join(run_dir, METRICS)
    seq_len = train_data.seq_len
    total = steps_for(cfg, seq_len, acc.num_processes)
    ga = cfg.grad_accum

    named = trainable_named(model)
    if not named:
        raise ValueError(f"{stage}: the model has no trainable parameters (nothing has requires_grad)")
    if cfg.mixed_precision != "no":
        # autocast computes in bf16/fp16; the master copies (and AdamW's state) stay fp32
        for p in named.values():
            if p.dtype != torch.float32:
                p.data = p.data.float()
    opt = torch.optim.AdamW(
        list(named.values()), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_with_warmup(s, total, cfg.warmup_steps, cfg.min_lr_ratio)
    )
    # the scheduler stays outside prepare(): it steps once per optimizer step on every rank
    pmodel, opt = acc.prepare(model, opt)
    unwrapped = acc.unwrap_model(pmodel)
    fsdp = acc.distributed_type.name == "FSDP"
    fsdp_dir = os.path.join(run_dir, "fsdp_state")

    start, done = 0, False
    if resume and (os.path.isfile(ckpt_path)):
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("stage") != stage:
            raise ValueError(f"{ckpt_path} is a checkpoint of stage {ck.get('stage')!r}, not {stage!r}")
        if set(ck["params"]) != set(trainable_named(unwrapped)) and not fsdp:
            raise ValueError(f"{ckpt_path}: its trainable parameters differ from this model's; wrong recipe?")
        if fsdp:
            acc.load_state(fsdp_dir)
        else:
            load_trainable(unwrapped, ck["params"])
            opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        start, done = ck["step"], ck.get("done", False)
        acc.print(f"[{stage}] resumed from {ckpt_path} at step {start}{' (stage finished)' if done else ''}")
    elif resume:
        acc.print(f"[{stage}] --resume: no checkpoint in {run_dir}, starting fresh")

    if acc.is_main_process:  # drop metrics past the checkpoint: the resumed run rewrites them
        kept = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= start] if start else []
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def save(step: int, loss: float, is_done: bool = False) -> None:
        state = {
            "stage": stage,
            "step": step,
            "micro_batches": step * ga,  # data position: the order is a function of it
            "done": is_done,
            "loss": loss,
            "scheduler": sched.state_dict(),
            "rng": rng_state(),
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        }
        if fsdp:  # sharded params/optimizer: Accelerate gathers and writes them, all ranks take part
            tmp = fsdp_dir + ".tmp"
            acc.save_state(tmp)
            if acc.is_main_process:
                old = fsdp_dir + ".old"
                if os.path.isdir(fsdp_dir):
                    os.replace(fsdp_dir, old)
                os.replace(tmp, fsdp_dir)
                import shutil

                shutil.rmtree(old, ignore_errors=True)
            state["params"] = {}
        else:
            state["params"] = {n: p.detach().cpu().clone() for n, p in trainable_named(unwrapped).items()}
            state["optimizer"] = opt.state_dict()
        if acc.is_main_process:
            atomic_save(state, ckpt_path)
        acc.wait_for_everyone()

    n_train = len(train_data)
    tokens_per_step = cfg.batch_size * ga * seq_len * acc.num_processes
    history: list[dict] = []
    last_loss = float("nan")
    stop_at = total if max_steps is None else min(total, max_steps)
    bar = None
    if progress and acc.is_main_process and not done and start < stop_at:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop_at, initial=start, desc=stage, unit="step", dynamic_ncols=True)
    last_good = ckpt_path if os.path.isfile(ckpt_path) else None

    def evaluate() -> Optional[float]:
        if val_data is None or len(val_data) == 0:
            return None
        pmodel.eval()
        losses = []
        with torch.no_grad():
            nb = min(cfg.eval_batches, max(1, len(val_data) // cfg.batch_size))
            for b in range(nb):
                idx = np.arange(b * cfg.batch_size, min(len(val_data), (b + 1) * cfg.batch_size))
                batch = {k: v.to(acc.device) for k, v in val_data.batch(idx).items()}
                with acc.autocast():
                    loss, _ = loss_fn(pmodel, batch)
                losses.append(loss.detach().float())
        pmodel.train()
        v = torch.stack(losses).mean()
        if acc.num_processes > 1:
            v = acc.reduce(v, "mean")
        return float(v)

    pmodel.train()
    t0 = time.perf_counter()
    step = start
    try:
        while not done and step < stop_at:
            t_step = time.perf_counter()
            micro_losses, extras = [], {}
            for m in range(ga):
                idx = micro_batch_indices(n_train, step * ga + m, cfg.batch_size, seed, acc.process_index, acc.num_processes)
                batch = {k: v.to(acc.device) for k, v in train_data.batch(idx).items()}
                with acc.accumulate(pmodel):
                    with acc.autocast():
                        loss, extra = loss_fn(pmodel, batch)
                    acc.backward(loss)
                micro_losses.append(loss.detach().float())
                for k, v in extra.items():
                    extras[k] = extras.get(k, 0.0) + float(v) / ga
            step_loss = torch.stack(micro_losses).mean()
            if acc.num_processes > 1:
                step_loss = acc.reduce(step_loss, "mean")
            if not torch.isfinite(step_loss):
                opt.zero_grad(set_to_none=True)
                raise NonFiniteLossError(step + 1, float(step_loss), last_good)  # 1-based, as in metrics
            grad_norm = None
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(list(named.values()), cfg.max_grad_norm))
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            last_loss = float(step_loss)
            dt = time.perf_counter() - t_step
            row = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "tokens": step * tokens_per_step,
                "tokens_per_s": tokens_per_step / max(dt, 1e-9),
                "elapsed_s": time.perf_counter() - t0,
                **({"grad_norm": grad_norm} if grad_norm is not None else {}),
                **extras,
            }
            is_last = step == total
            if cfg.eval_every and step % cfg.eval_every == 0 or is_last:
                v = evaluate()
                if v is not None:
                    row["val_loss"] = v
            history.append(row)
            if acc.is_main_process and (step % max(1, cfg.log_every) == 0 or is_last or "val_loss" in row):
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4g}", tok_s=f"{row['tokens_per_s']:.0f}")
            if is_last or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                save(step, last_loss, is_done=is_last)
                last_good = ckpt_path
            elif max_steps is not None and step == stop_at:
                save(step, last_loss)  # a planned stop (tests, time limits) is resumable
                last_good = ckpt_path
    finally:
        if bar is not None:
            bar.close()
        if acc.is_main_process:
            plot_loss_curve(metrics_path, os.path.join(run_dir, "loss.png"), title=stage)
    acc.wait_for_everyone()
    return TrainResult(step, last_loss, run_dir, ckpt_path, history, resumed_from=start)


# ------------------------------------------------------------------ pipeline setup


def data_budget(cfg, world: int = 1) -> int:
    """Training tokens both stages read in one pass (more would only be tokenised for nothing)."""
    need = max(
        steps_for(st, cfg.data.seq_len, world) * st.batch_size * st.grad_accum * cfg.data.seq_len * world
        for st in (cfg.distill, cfg.finetune)
    )
    return min(need, cfg.data.max_tokens) if cfg.data.max_tokens else need


def load_converted(cfg, convert: bool = True):
    """(model, tokenizer) of a recipe: loaded, seq_len checked, linearized with ``cfg.linearize``."""
    from .recipes import check_seq_len

    model, tok = build_model(cfg.model, seed=cfg.seed)
    check_seq_len(cfg.data.seq_len, model.config)
    if convert:
        from . import convert as _convert

        with torch.random.fork_rng(devices=[]):  # new-parameter init must not shift the data/RNG stream
            torch.manual_seed(cfg.seed)
            model = _convert(model, cfg.linearize)
    return model, tok


def stage_data(cfg, tokenizer, world: int = 1):
    """(train, held-out) BlockDatasets of a recipe (same blocks for both stages and commands)."""
    from .data import build_datasets

    return build_datasets(cfg.data, tokenizer, max_tokens=data_budget(cfg, world))
