"""Recipes: one typed ``RunConfig`` per training run, read from and written to YAML 1:1.

A recipe YAML mirrors the dataclasses below key for key::

    model:     {name_or_path, gguf_file, dtype}
    linearize: LinearizeConfig fields (method, window, feature_dim, ...)
    data:      DataConfig
    distill:   StageConfig          (stage 1, attention transfer)
    finetune:  FinetuneConfig       (stage 2, LoRA)
    eval:      EvalConfig
    output_dir, seed

``load_recipe(path, overrides=["--distill.lr=1e-3"])`` applies dotted overrides after the YAML;
an unknown key anywhere raises ``RecipeError`` naming the key and the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .config import LinearizeConfig

#: special ``model.name_or_path``: a 2-layer random LlamaForCausalLM with a byte-level tokenizer,
#: built in code (see ``linearize.training.build_model``) so smoke tests need no checkpoint.
TINY_RANDOM_LLAMA = "tiny-random-llama"


class RecipeError(ValueError):
    """A recipe that cannot be run: unknown key, wrong type, impossible value."""


@dataclass
class ModelConfig:
    """Which pretrained model to linearize.

    name_or_path: HF dir, hub id, .gguf file, alias (``smollm2-135m``) or ``tiny-random-llama``.
    gguf_file:    GGUF file inside ``name_or_path`` when it is a directory.
    dtype:        weights dtype at load: float32 | bfloat16 | float16.
    """

    name_or_path: str = TINY_RANDOM_LLAMA
    gguf_file: Optional[str] = None
    dtype: str = "float32"


@dataclass
class DataConfig:
    """Where training text comes from and how it becomes fixed-length token blocks.

    path:           a directory of ``<source>-NNN.jsonl.gz`` shards (mixed by ``source_weights``),
                    a local file (json / jsonl / jsonl.gz / txt / parquet), or a hub dataset name.
                    Relative paths resolve against the repository root.
    token_file:     a pre-tokenised flat uint16 ``.npy`` (``python -m linearize.data``); when set it
                    is used instead of ``path``; ``<stem>.val.npy`` beside it is the held-out part.
    format:         auto | text | instruction (alpaca-style instruction/input/output records).
    template:       instruction rendering: alpaca | chat (the tokenizer's chat template).
    text_field:     record field holding the text for ``format: text``.
    split:          split name for hub datasets.
    source_weights: {source: weight} for a shard directory; empty = every source by its size.
    seq_len:        tokens per block (both stages).
    max_tokens:     training tokens to tokenise at most (None = all there is).
    val_fraction:   fraction of documents held out (fixed by a seeded hash of the text).
    val_tokens:     held-out tokens kept at most.
    max_doc_tokens: a long document (a book) contributes one random window of about this many
                    tokens, so a few books cannot crowd out the other sources.
    mask_prompt:    instruction records: no loss on the prompt tokens.
    seed:           seed of document order, source mixing and the held-out split.
    """

    path: str = "../shared/data/corpus"
    token_file: Optional[str] = None
    format: str = "auto"
    template: str = "alpaca"
    text_field: str = "text"
    split: str = "train"
    source_weights: dict[str, float] = field(default_factory=dict)
    seq_len: int = 1024
    max_tokens: Optional[int] = None
    val_fraction: float = 0.01
    val_tokens: int = 65536
    max_doc_tokens: int = 8192
    mask_prompt: bool = False
    seed: int = 0


@dataclass
class StageConfig:
    """Optimisation of one training stage (the shared loop in ``linearize.training``).

    steps:           optimizer steps; if 0, derived from ``tokens``.
    tokens:          token budget of the stage (used when ``steps`` is 0).
    batch_size:      sequences per micro-batch on one device: the memory bound of a forward pass.
    grad_accum:      micro-batches per optimizer step on one process.
                     ``batch_size * grad_accum`` is the GLOBAL batch (sequences per optimizer
                     step), the same whatever the process count: under N processes each takes
                     ``global / N`` sequences a step, in micro-batches of at most ``batch_size``
                     (``split_batch``), so the curve, the step count and the token budget of a
                     recipe do not depend on how many GPUs run it.
    lr, weight_decay, betas: AdamW.
    warmup_steps:    linear warm-up, then cosine decay to ``min_lr_ratio * lr``.
    max_grad_norm:   gradient clipping (0 = off).
    mixed_precision: no | bf16 | fp16 (Accelerate autocast; master weights stay fp32).
    log_every:       steps between metrics lines (every step is also kept in the bar).
    eval_every:      steps between held-out losses (0 = only at the end).
    eval_batches:    held-out micro-batches per evaluation.
    ckpt_every:      steps between atomic checkpoints (0 = only at the end).
    cuda_graph:      capture each micro-step (forward + backward) in a CUDA graph and replay it, on
                     one CUDA device in bf16 / fp32 (``linearize.cuda_graph_step``); elsewhere ignored.
    """

    steps: int = 100
    tokens: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    log_every: int = 1
    eval_every: int = 0
    eval_batches: int = 4
    ckpt_every: int = 50
    cuda_graph: bool = True


@dataclass
class DistillConfig(StageConfig):
    """Stage 1: attention transfer (only the new parameters train).

    transfer_ce_weight: weight of the teacher/student attention-weight cross-entropy added to
                        each layer's output MSE, for methods that have attention weights
                        (Hedgehog's loss); 0 = MSE only, as LoLCATs.
    """

    transfer_ce_weight: float = 0.0


@dataclass
class FinetuneConfig(StageConfig):
    """Stage 2: LoRA fine-tuning of the linearized model, optionally distilling the teacher's logits.

    lora_r, lora_alpha, lora_dropout, lora_targets: the PEFT LoraConfig.
    train_new_params: also keep training the stage-1 parameters (LoLCATs freezes them).
    distill_weight:   weight of KL(teacher || student) on next-token logits (0 = plain LM loss).
    distill_temperature: softmax temperature of that KL.
    lm_weight:        weight of the next-token cross-entropy.
    save_merged:      also write the merged (LoRA folded in) model.
    chunked_lm_loss:  compute the LM loss from the last hidden states in row chunks (linearize.lm_loss)
                      instead of HF's full logits, where it applies (no logit distillation, a plain
                      LM head, no FSDP); the same loss, less memory traffic.
    """

    lr: float = 1e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    train_new_params: bool = False
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    lm_weight: float = 1.0
    save_merged: bool = True
    chunked_lm_loss: bool = True


@dataclass
class EvalConfig:
    """What ``run`` evaluates at the end (``linearize.eval.report.run_report``); no tasks = skip.

    tasks:  lm-eval short names (piqa, arc_easy, ...).
    limit:  documents per task (None = all).
    probes: context lengths of the recall probes (empty = no probes).
    batch_size: lm-eval batch size (an int, or "auto").
    """

    tasks: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    probes: list[int] = field(default_factory=list)
    batch_size: int = 16


@dataclass
class RunConfig:
    """A whole run: convert -> distill (stage 1) -> finetune (stage 2) -> save -> eval."""

    model: ModelConfig = field(default_factory=ModelConfig)
    linearize: LinearizeConfig = field(default_factory=LinearizeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"
    seed: int = 0

    def validate(self) -> None:
        check_choice("data.format", self.data.format, ("auto", "text", "instruction"))
        check_choice("data.template", self.data.template, ("alpaca", "chat"))
        check_choice("model.dtype", self.model.dtype, ("float32", "bfloat16", "float16"))
        for name in ("distill", "finetune"):
            st: StageConfig = getattr(self, name)
            check_choice(f"{name}.mixed_precision", st.mixed_precision, ("no", "bf16", "fp16"))
            for k in ("batch_size", "grad_accum"):
                if getattr(st, k) < 1:
                    raise RecipeError(f"{name}.{k} must be >= 1, got {getattr(st, k)}")
            if st.steps < 0 or (st.steps == 0 and st.tokens <= 0):
                raise RecipeError(f"{name}: set steps > 0 or tokens > 0 (got steps={st.steps}, tokens={st.tokens})")
        if self.data.seq_len < 2:
            raise RecipeError(f"data.seq_len must be >= 2, got {self.data.seq_len}")
        if not 0 <= self.data.val_fraction < 1:
            raise RecipeError(f"data.val_fraction must lie in [0, 1), got {self.data.val_fraction}")
        try:
            self.linearize.validate()
        except ValueError as e:
            raise RecipeError(f"linearize: {e}") from None

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RecipeError(f"{key}: {value!r} is not one of {', '.join(choices)}{hint}")


def global_batch(stage: StageConfig) -> int:
    """Sequences per optimizer step, summed over all processes: ``batch_size * grad_accum``."""
    return stage.batch_size * stage.grad_accum


def split_batch(stage: StageConfig, world_size: int = 1) -> tuple[int, int]:
    """(per-device micro-batch, accumulation steps) that give the recipe's global batch on
    ``world_size`` processes.

    Each process takes ``global / world_size`` sequences a step; the micro-batch is the largest
    divisor of that which does not exceed the recipe's ``batch_size`` (the memory bound), so all
    micro-batches have the same size and the mean of their losses is the mean over the step.
    One process gets the recipe's own (batch_size, grad_accum) back.
    """
    g = global_batch(stage)
    if world_size < 1:
        raise RecipeError(f"world size must be >= 1, got {world_size}")
    if g % world_size:
        raise RecipeError(
            f"the global batch batch_size*grad_accum = {stage.batch_size}*{stage.grad_accum} = {g} sequences "
            f"does not split evenly over {world_size} processes; use a process count that divides {g} "
            f"or change grad_accum"
        )
    per_rank = g // world_size
    micro = max(d for d in range(1, min(stage.batch_size, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def steps_for(stage: StageConfig, seq_len: int) -> int:
    """Optimizer steps of a stage: ``steps``, or ``tokens`` / tokens-per-step (at least 1).

    Tokens per step = global batch * seq_len: independent of the process count.
    """
    if stage.steps > 0:
        return stage.steps
    per_step = global_batch(stage) * seq_len
    return max(1, stage.tokens // per_step)


def check_seq_len(seq_len: int, model_config) -> None:
    """Refuse a block length the model's position embeddings (RoPE range) were not trained for."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise RecipeError(
            f"data.seq_len={seq_len} is above the model's max_position_embeddings={limit}; "
            f"use --data.seq_len={limit} or less"
        )


# ------------------------------------------------------------------ dict <-> dataclass, 1:1


def to_dict(obj) -> Any:
    """Dataclass -> plain dict / list / scalar tree that ``yaml.safe_dump`` writes."""
    if isinstance(obj, LinearizeConfig):
        d = dataclasses.asdict(obj)
        d["layer_methods"] = {int(k): v for k, v in obj.layer_methods.items()}
        return d
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _unknown_key(key: str, valid: list[str], where: str) -> RecipeError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {where}{near[0]!r}?" if near else ""
    return RecipeError(f"unknown recipe key {where}{key!r}{hint} (valid here: {', '.join(valid)})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert ``value`` to the annotated type ``tp``; ``key`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            value = [value]  # `--eval.tasks=piqa` means a list of one
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RecipeError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:  # "20e6" and 2.0e7 are fine token counts if they are whole numbers
            f = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` / `yes` as a bool
            return "yes" if value else "no"
        if value is None or isinstance(value, (dict, list)):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, d: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a dict, refusing unknown keys (naming the nearest valid one)."""
    if d is None:
        d = {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            raise _unknown_key(str(k), names, prefix)
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # LinearizeConfig validates itself
        raise RecipeError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


# ------------------------------------------------------------------ overrides


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``["--distill.lr=1e-3", "data.seq_len=256"]`` -> ``[("distill.lr", 0.001), ...]``.

    Values are read as YAML (lists ``[1,2]``, ``null``, ``true``); the field's type then coerces.
    """
    out = []
    for a in args:
        s = a[2:] if a.startswith("--") else a
        if "=" not in s:
            raise RecipeError(f"override {a!r} is not of the form --key=value")
        k, v = s.split("=", 1)
        try:
            val = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            val = v
        out.append((k.strip(), val))
    return out


def apply_override(tree: dict, cls, dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``a.b.c``, checking each key against the dataclasses."""
    parts = dotted.split(".")
    node, tp, where = tree, cls, ""
    for i, p in enumerate(parts):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else None
        last = i == len(parts) - 1
        if hints is not None:
            if p not in hints:
                raise _unknown_key(p, [f.name for f in dataclasses.fields(tp)], where)
            ftp = hints[p]
            if typing.get_origin(ftp) in (typing.Union, types.UnionType):
                ftp = [a for a in typing.get_args(ftp) if a is not type(None)][0]
        else:  # inside a dict field (source_weights.wikipedia=2)
            ftp = Any
        if last:
            node[p] = value
        else:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node, tp, where = node[p], ftp, f"{where}{p}."


def load_recipe(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe YAML (or start from defaults when ``path`` is None), apply overrides, validate."""
    tree: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            near = ""
            folder = os.path.dirname(path) or "."
            if os.path.isdir(folder):
                cand = difflib.get_close_matches(os.path.basename(path), os.listdir(folder), n=1)
                near = f"; did you mean {os.path.join(folder, cand[0])}?" if cand else ""
            raise FileNotFoundError(f"recipe {path} not found{near}")
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
        if not isinstance(tree, dict):
            raise RecipeError(f"recipe {path}: top level must be a mapping")
    for k, v in parse_overrides(overrides or []):
        apply_override(tree, RunConfig, k, v)
    cfg = from_dict(RunConfig, tree)
    cfg.validate()
    return cfg


def save_recipe(cfg: RunConfig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(cfg.to_yaml())


def repo_root() -> str:
    """The repository root (parent of the ``linearize`` package): data paths resolve against it."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(p: str | None) -> str | None:
    """Absolute paths and existing cwd-relative paths as given; others relative to the repo root."""
    if p is None or os.path.isabs(p) or os.path.exists(p):
        return p
    cand = os.path.join(repo_root(), p)
    return cand if os.path.exists(cand) else p
