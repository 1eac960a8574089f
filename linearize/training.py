"""The training loop both stages share: Accelerate, accumulation, clipping, cosine LR, checkpoints.

    result = train(model, loss_fn, train_blocks, stage_cfg, run_dir, val_data=val_blocks)

``loss_fn(model, batch) -> (loss, {name: float})`` is the only stage-specific part. The loop

* runs through ``accelerate.Accelerator`` (plain python on CPU, ``accelerate launch`` on 1 GPU,
  DDP or FSDP; ``torchrun`` on CPU gives gloo DDP), with ``mixed_precision`` (bf16 autocast;
  trainable weights stay fp32) and gradient accumulation;
* keeps the recipe's GLOBAL batch (``batch_size * grad_accum`` sequences a step) whatever the
  process count: ``recipes.split_batch`` derives the per-device micro-batch and accumulation, the
  data order is a function of the step (so each step sees the same sequences on 1 or N
  processes, split without overlap), and every logged number is reduced over processes: the
  loss curve of N processes is that of one, up to float summation order;
* writes only from the main process (metrics, plot, checkpoint, artifacts); a checkpoint records
  the recipe it belongs to (``identity``) and resumes under any process count, and one of
  another recipe is refused before a step runs;
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

from .cuda_graph_step import GraphedStep, enabled_for
from .recipes import TINY_RANDOM_LLAMA, ModelConfig, StageConfig, global_batch, split_batch, steps_for, to_dict

LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class CheckpointMismatchError(ValueError):
    """A checkpoint that cannot be resumed by this run (another recipe, stage or parallelism)."""


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


def micro_batch_indices(
    n_blocks: int, micro: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, grad_accum: int = 1
):
    """Block indices of this rank's ``micro``-th micro-batch: a pure function of its arguments.

    ``batch_size`` / ``grad_accum`` are this process's (``recipes.split_batch``); a step takes
    ``G = batch_size * grad_accum * world`` consecutive entries of a stream made of seeded
    permutations, epoch after epoch; rank r owns the r-th ``G / world`` of them and its micro-batch
    m the m-th ``batch_size`` of those. Epochs are cut at whole steps (a remainder is skipped), so
    the blocks of step s are the same for every split of the same global batch G: one process and
    N processes train on the same data, without overlap or loss. Resuming only needs ``micro``.
    """
    per_step = batch_size * grad_accum * world
    if n_blocks < per_step:
        raise ValueError(f"{n_blocks} training blocks are fewer than one global batch of {per_step}")
    step, m = divmod(micro, grad_accum)
    epoch, k = divmod(step, n_blocks // per_step)
    perm = np.random.default_rng([seed, epoch]).permutation(n_blocks)
    start = k * per_step + rank * batch_size * grad_accum + m * batch_size
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


def check_devices(local_processes: int, n_gpus: int) -> None:
    """Refuse more processes on a node than GPUs it shows, before any process group or step.

    On CPU (gloo) there is no device count to exceed: processes share the cores, so too many only
    run slower; that case is not an error.
    """
    if n_gpus > 0 and local_processes > n_gpus:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(
            f"{local_processes} processes were launched on this node but only {n_gpus} GPU(s) are visible"
            f"{f' (CUDA_VISIBLE_DEVICES={vis})' if vis is not None else ''}: launch with --num_processes "
            f"{n_gpus} or fewer (the recipe's global batch stays the same whatever the count)"
        )


def make_accelerator(mixed_precision: str, grad_accum: int = 1, cpu: Optional[bool] = None):
    """An Accelerator for one stage; a stage with another precision resets the shared state
    (Accelerate keeps it process-wide) but keeps the process group.

    cpu: run on CPU; default: when CUDA is not available. Accelerate only sets up a gloo process
    group (``DistributedType.MULTI_CPU``) under ``torchrun`` when asked for the CPU, so this
    flag is what makes multi-process CPU runs real DDP rather than N independent copies.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cpu is None:
        cpu = not torch.cuda.is_available()
    if not cpu:
        check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count())
    st = AcceleratorState._shared_state
    if st and st.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu)


def process_state():
    """Accelerate's process-wide ``PartialState`` (world size, rank, barriers).

    Whoever creates it first fixes it for the process, and without ``cpu=True`` a CPU-only
    ``torchrun`` launch is set up as N unrelated single processes: every caller goes through here
    so the first creation already asks for gloo when there is no GPU.
    """
    from accelerate.state import PartialState

    cpu = not torch.cuda.is_available()
    if not cpu:  # PartialState would bind cuda:LOCAL_RANK and fail with a bare "invalid device ordinal"
        check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count())
    return PartialState(cpu=cpu)


def fsdp_wrap_classes(acc) -> Optional[list[str]]:
    """The layer class names an FSDP transformer wrap policy will look for (None: not FSDP or
    another policy). Unset names mean the model's ``_no_split_modules``, as Accelerate does."""
    if acc.distributed_type.name != "FSDP":
        return None
    plugin = acc.state.fsdp_plugin
    policy = getattr(plugin, "auto_wrap_policy", None)
    name = getattr(policy, "__name__", getattr(getattr(policy, "func", None), "__name__", str(policy)))
    if "transformer" not in str(name).lower():
        return None
    return list(plugin.transformer_cls_names_to_wrap or [])


def check_wrap_policy(model: torch.nn.Module, class_names: Optional[list[str]]) -> None:
    """Refuse an FSDP wrap policy naming a layer class the model does not have, listing the
    candidates, before the model is wrapped (Accelerate would fail inside ``prepare``, or, with a
    partial match, shard some layers and not others)."""
    if class_names is None:
        return
    present = {type(m).__name__ for m in model.modules()}
    names = list(class_names) or list(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError("FSDP transformer wrap policy without layer classes, and the model declares no "
                         "_no_split_modules: set fsdp_transformer_layer_cls_to_wrap in the accelerate config")
    missing = [n for n in names if n not in present]
    if missing:
        cands = sorted(n for n in present if n.endswith(("DecoderLayer", "Layer", "Block")))
        raise ValueError(
            f"FSDP wrap policy names layer class(es) {missing} that match no module of the model; "
            f"its layer classes are {cands}: set fsdp_transformer_layer_cls_to_wrap to one of them "
            f"(the decoder layer, e.g. LlamaDecoderLayer)"
        )


# ------------------------------------------------------------------ recipe identity of a checkpoint

#: stage keys a resumed run may change: how the global batch is split, and how often it logs
RESUME_FREE_KEYS = ("batch_size", "grad_accum", "log_every", "eval_every", "eval_batches", "ckpt_every", "cuda_graph")


def stage_identity(cfg: StageConfig, seq_len: int, context: Optional[dict] = None) -> dict:
    """Flat {key: value} of everything that decides a stage's trajectory: its optimisation keys
    (with the global batch in place of the batch split), the block length and ``context`` (the
    model, conversion, data and seed keys the stage passes in). A checkpoint stores it; a resume
    with another identity is another recipe."""
    out = {k: to_dict(getattr(cfg, k)) for k in cfg.__dataclass_fields__ if k not in RESUME_FREE_KEYS}
    out["global_batch"] = global_batch(cfg)
    out["seq_len"] = seq_len
    out.update(context or {})
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: recipe trees as comparable dotted keys."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_diff(saved: dict, current: dict) -> list[str]:
    """Lines ``key: checkpoint X, this run Y`` for every key whose value differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k, '<unset>')!r}, this run {current.get(k, '<unset>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ------------------------------------------------------------------ the loop


@dataclass
class TrainResult:
    """What a stage ended with; ``history`` holds the metrics lines of the steps run (reduced
    over processes, the same on every rank). ``final_state`` is, under FSDP only, the gathered
    full trainable parameters (on the main process; the model's own are shards)."""

    steps: int
    final_loss: float
    run_dir: str
    checkpoint: str
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    world_size: int = 1
    final_state: Optional[dict] = None


def read_checkpoint(path: str, stage: str, names: set[str], identity: dict, fsdp: bool) -> dict:
    """Load ``path`` and check it belongs to this run; raises ``CheckpointMismatchError``
    (before any model wrapping or step, so nothing is overwritten) naming what differs."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck.get("stage") != stage:
        raise CheckpointMismatchError(f"{path} is a checkpoint of stage {ck.get('stage')!r}, not {stage!r}")
    saved = ck.get("identity")
    if saved is not None and saved != identity:
        diff = identity_diff(saved, identity)
        raise CheckpointMismatchError(
            f"{path} was written by another recipe; refusing to resume (the checkpoint is left as it is):\n  "
            + "\n  ".join(diff[:8]) + ("\n  ..." if len(diff) > 8 else "")
            + "\nresume with the recipe that wrote it, or use another output_dir"
        )
    if bool(ck.get("fsdp", False)) != fsdp:
        was = "FSDP (sharded state)" if ck.get("fsdp") else "one process or DDP (full state)"
        raise CheckpointMismatchError(
            f"{path} was written under {was}; resume it under the same kind of parallelism "
            f"(any process count)"
        )
    if not fsdp and set(ck["params"]) != names:
        raise CheckpointMismatchError(f"{path}: its trainable parameters differ from this model's; wrong recipe?")
    return ck


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
    identity: Optional[dict] = None,
) -> TrainResult:
    """Optimise the ``requires_grad`` parameters of ``model`` on ``loss_fn`` over ``train_data``.

    train_data / val_data: ``linearize.data.BlockDataset`` (``batch(indices)`` -> tensors [B, L]).
    max_steps: stop after this many steps (a simulated kill in tests); the schedule still spans
    ``cfg``'s full length so a resumed run continues the same curve.
    identity: recipe keys beyond ``cfg`` that decide the trajectory (model, conversion, data,
    seed); stored in the checkpoint with ``cfg``'s own (``stage_identity``) and checked on resume.
    """
    acc = accelerator or make_accelerator(cfg.mixed_precision)
    world, rank = acc.num_processes, acc.process_index
    micro_bs, ga = split_batch(cfg, world)  # the recipe's global batch, split over `world` processes
    acc.gradient_accumulation_steps = ga
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    metrics_path = os.path.join(run_dir, METRICS)
    seq_len = train_data.seq_len
    total = steps_for(cfg, seq_len)
    ident = stage_identity(cfg, seq_len, identity)
    fsdp = acc.distributed_type.name == "FSDP"
    fsdp_dir = os.path.join(run_dir, "fsdp_state")

    named = trainable_named(model)
    if not named:
        raise ValueError(f"{stage}: the model has no trainable parameters (nothing has requires_grad)")
    # every check that can refuse the run comes before the first write to run_dir
    check_wrap_policy(model, fsdp_wrap_classes(acc))
    ck = None
    if resume and os.path.isfile(ckpt_path):
        ck = read_checkpoint(ckpt_path, stage, set(named), ident, fsdp)
    os.makedirs(run_dir, exist_ok=True)

    if cfg.mixed_precision != "no":
        # autocast computes in bf16/fp16; the master copies (and AdamW's state) stay fp32. FSDP
        # flattens a layer's parameters into one tensor, which needs one dtype: all go fp32 there
        # (sharded, so 1/N each) and FSDP's mixed precision casts them for compute.
        for p in (model.parameters() if fsdp else named.values()):
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
    params = [p for p in pmodel.parameters() if p.requires_grad]  # after wrapping: what clipping sees

    start, done = 0, False
    if ck is not None:
        if fsdp:
            acc.load_state(fsdp_dir)  # sharded (torch.distributed.checkpoint): reshards to this world size
        else:
            load_trainable(unwrapped, ck["params"])
            opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        start, done = ck["step"], ck.get("done", False)
        was = ck.get("world_size", 1)
        acc.print(f"[{stage}] resumed from {ckpt_path} at step {start}{' (stage finished)' if done else ''}"
                  f"{f' (written by {was} processes, now {world})' if was != world else ''}")
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
            "sequences": step * global_batch(cfg),  # data position: the order is a function of the step
            "done": is_done,
            "loss": loss,
            "scheduler": sched.state_dict(),
            "rng": rng_state(),  # the main process's; nothing random differs between ranks
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "identity": ident,
            "world_size": world,
            "fsdp": fsdp,
        }
        if fsdp:  # sharded params/optimizer: Accelerate writes them, all ranks take part
            tmp = fsdp_dir + ".tmp"
            acc.save_state(tmp)
            acc.wait_for_everyone()  # every shard is on disk before the directory is published
            if acc.is_main_process:
                old = fsdp_dir + ".old"
                if os.path.isdir(fsdp_dir):
                    os.replace(fsdp_dir, old)
                os.replace(tmp, fsdp_dir)
                import shutil

                shutil.rmtree(old, ignore_errors=True)
            state["params"] = {}
        else:  # DDP replicas are identical: rank 0's copy is the full state, any world size resumes it
            state["params"] = {n: p.detach().cpu().clone() for n, p in trainable_named(unwrapped).items()}
            state["optimizer"] = opt.state_dict()
        if acc.is_main_process:
            atomic_save(state, ckpt_path)
        acc.wait_for_everyone()

    n_train = len(train_data)
    tokens_per_step = global_batch(cfg) * seq_len
    history: list[dict] = []
    last_loss = float("nan")
    stop_at = total if max_steps is None else min(total, max_steps)
    bar = None
    if progress and acc.is_main_process and not done and start < stop_at:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop_at, initial=start, desc=stage, unit="step", dynamic_ncols=True)
    last_good = ckpt_path if os.path.isfile(ckpt_path) else None

    def evaluate() -> Optional[float]:
        """Mean held-out loss over the first ``eval_batches`` batches of ``cfg.batch_size``: the
        same batches whatever the process count, dealt round-robin over the ranks. Every rank runs
        the same number of forward passes (FSDP's all-gathers need all of them; a rank short of
        a batch repeats batch 0 with weight 0); the (sum, count) pair is summed over ranks."""
        if val_data is None or len(val_data) == 0:
            return None
        pmodel.eval()
        bs = cfg.batch_size
        nb = min(cfg.eval_batches, max(1, len(val_data) // bs))
        acc_sum = torch.zeros(2, device=acc.device)
        with torch.no_grad():
            for j in range(math.ceil(nb / world)):
                b = j * world + rank
                real = b < nb
                b = b if real else 0
                idx = np.arange(b * bs, min(len(val_data), (b + 1) * bs))
                batch = {k: v.to(acc.device) for k, v in val_data.batch(idx).items()}
                with acc.autocast():
                    loss, _ = loss_fn(pmodel, batch)
                if real:
                    acc_sum += torch.stack([loss.detach().float(), torch.ones((), device=acc.device)])
        pmodel.train()
        if world > 1:
            acc_sum = acc.reduce(acc_sum, "sum")
        return float(acc_sum[0] / acc_sum[1])

    pmodel.train()
    graphed = None
    if cfg.cuda_graph and enabled_for(acc.device, world, cfg.mixed_precision, acc.distributed_type.name):
        graphed = GraphedStep(loss_fn, pmodel, acc.autocast, grad_scale=1.0 / ga)
    t0 = time.perf_counter()
    step = start
    try:
        while not done and step < stop_at:
            t_step = time.perf_counter()
            micro_losses, extras = [], {}
            for m in range(ga):
                idx = micro_batch_indices(n_train, step * ga + m, micro_bs, seed, rank, world, ga)
                batch = {k: v.to(acc.device) for k, v in train_data.batch(idx).items()}
                if graphed is not None:  # one process, no scaler: what acc.backward would do, replayed
                    loss, extra = graphed(batch)
                else:
                    with acc.accumulate(pmodel):
                        with acc.autocast():
                            loss, extra = loss_fn(pmodel, batch)
                        acc.backward(loss)
                micro_losses.append(loss.detach().float())
                for k, v in extra.items():  # kept on the device: one host sync per step, below
                    extras[k] = extras.get(k, 0.0) + torch.as_tensor(v, device=acc.device).detach().float() / ga
            # the step loss and the per-part losses, averaged over ranks in one collective: every
            # rank's micro-batches have the same size, so this is the mean over the global batch
            keys = sorted(extras)
            vals = torch.stack([torch.stack(micro_losses).mean()] + [extras[k].reshape(()) for k in keys])
            if world > 1:
                vals = acc.reduce(vals, "mean")
            vals = vals.tolist()
            step_loss = vals[0]
            extras = dict(zip(keys, vals[1:]))
            if not math.isfinite(step_loss):  # the same reduced value on every rank: all stop
                opt.zero_grad(set_to_none=graphed is None)
                raise NonFiniteLossError(step + 1, step_loss, last_good)  # 1-based, as in metrics
            grad_norm = None
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm))
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=graphed is None)  # a captured step adds into these very tensors
            step += 1
            last_loss = step_loss
            dt = time.perf_counter() - t_step
            row = {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "tokens": step * tokens_per_step,
                "tokens_per_s": tokens_per_step / max(dt, 1e-9),
                "elapsed_s": time.perf_counter() - t0,
                "world_size": world,
                "micro_batch": micro_bs,
                "grad_accum": ga,
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
    final_state = gather_trainable(acc, pmodel, set(named)) if fsdp else None
    acc.wait_for_everyone()
    if accelerator is None:
        # drop the wrapper (its DDP hooks on the parameters) before the next stage wraps again
        acc.free_memory()
        del pmodel
    return TrainResult(step, last_loss, run_dir, ckpt_path, history, resumed_from=start, world_size=world,
                       final_state=final_state)


def gather_trainable(acc, pmodel, names: set[str]) -> dict[str, torch.Tensor]:
    """The full trainable tensors of an FSDP model on the main process (empty elsewhere): a
    collective, every rank must call it. Accelerate gathers a full state dict, whose keys are
    the unwrapped model's parameter names."""
    sd = acc.get_state_dict(pmodel)
    return {n: t.detach().cpu().clone() for n, t in (sd or {}).items() if n in names} if acc.is_main_process else {}


# ------------------------------------------------------------------ pipeline setup


def data_budget(cfg) -> int:
    """Training tokens both stages read in one pass (more would only be tokenised for nothing);
    the same for any process count, as the global batch is."""
    need = max(steps_for(st, cfg.data.seq_len) * global_batch(st) * cfg.data.seq_len for st in (cfg.distill, cfg.finetune))
    return min(need, cfg.data.max_tokens) if cfg.data.max_tokens else need


def recipe_identity(cfg, stage: str) -> dict:
    """Flat recipe keys besides the stage's own that decide a stage's trajectory: model,
    conversion, data and seed (``train(identity=...)``)."""
    return flatten({"model": to_dict(cfg.model), "linearize": to_dict(cfg.linearize), "data": to_dict(cfg.data),
                    "seed": cfg.seed})


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


def stage_data(cfg, tokenizer):
    """(train, held-out) BlockDatasets of a recipe (same blocks for both stages, commands and
    process counts: every process tokenises the same stream and takes its share by index)."""
    from .data import build_datasets

    return build_datasets(cfg.data, tokenizer, max_tokens=data_budget(cfg))
