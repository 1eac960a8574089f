"""Training throughput: stage 1 and stage 2 tokens/s beside the teacher's plain forward+backward.

    python -m linearize.bench_train --model smollm2-135m --batch 16 --seq 1024 [--method lizard] [--json out.json]

On one random batch [batch, seq] it times, after warm-up, each of
  teacher:  the original model, every parameter trainable, LM loss forward + backward (the issue's
            reference: the teacher's plain step);
  teacher_graph: the same step captured in a CUDA graph: the like-for-like peer of the *_graph rows
            (the eager teacher is partly bound by the host, whose speed varied between lent machines);
  distill:  the converted model in mode "transfer", new parameters trainable, forward + backward
            of the summed per-layer transfer losses (the stage-1 step);
  finetune: the converted model with LoRA (r=8 on q/k/v/o) in mode "student", forward + backward
            of stage 2's loss (``finetune.make_finetune_loss``, the recipe defaults: the LM loss,
            from the hidden states in chunks; the stage-2 step);
  *_graph:  the same two steps captured in a CUDA graph and replayed (``linearize.cuda_graph_step``),
            as training runs them on one GPU;
with the converted model's frozen weights stored in ``frozen_dtype`` (the trainable ones stay fp32),
as a recipe's ``model.dtype`` leaves them: bf16 there spares autocast a cast of every frozen weight
at every call and halves the residual stream's traffic. The teacher keeps fp32 weights under
autocast: every one of its weights trains, so each needs its fp32 master copy;
and prints tokens/s and the ratio to the teacher. The optimizer step is left out of all three
(it is tiny beside forward + backward for the stages, and would be a full AdamW for the teacher).
bf16 autocast on CUDA unless ``--precision no``.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from .config import LinearizeConfig
from .recipes import FinetuneConfig, ModelConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``step()`` over ``iters`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


STAGES = ("distill", "distill_graph", "finetune", "finetune_graph")  # the rows compared with the teacher


def profile_nth_call(names, on_profile, n: int = 3, **profile_kwargs):
    """A ``wrap`` for ``bench``: the ``n``-th call of each step named in ``names`` (None: every step)
    runs under ``torch.profiler.profile(**profile_kwargs)``, then ``on_profile(name, prof)``; the
    other calls (warm-up, the timed ones) run as they are. With ``bench``'s warm-up of 3 or more, the
    profiled call is an untimed one."""
    from torch.profiler import profile

    def wrap(name, step):
        if names is not None and name not in names:
            return step
        calls = [0]

        def profiled():
            calls[0] += 1
            if calls[0] != n:
                return step()
            with profile(**profile_kwargs) as prof:
                step()
                torch.cuda.synchronize()
            on_profile(name, prof)
        return profiled
    return wrap


def store_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen parameters in ``dtype``, trainable ones in fp32: what ``linearize.training.train``
    does to a model loaded in ``dtype``."""
    for p in model.parameters():
        want = torch.float32 if p.requires_grad else dtype
        if p.is_floating_point() and p.dtype != want:
            p.data = p.data.to(want)


def bench(model_name: str = "smollm2-135m", batch: int = 16, seq: int = 1024, method: str = "lizard",
          precision: str = "bf16", warmup: int = 2, iters: int = 5, device: str | None = None,
          gguf_file: str | None = None, linearize_options: dict | None = None, model=None, wrap=None,
          graph: bool = True, frozen_dtype: str | None = None) -> dict:
    """-> {"teacher": {tokens_per_s, step_s}, "distill": {..., ratio}, "finetune": {..., ratio}, ...}.

    ``model``: an already built fp32 model to use instead of loading ``model_name``; ``wrap(name, step)``
    may wrap each timed step (a profiler, say) and return the callable to time."""
    from . import convert
    from .attention_transfer import freeze_all_but_new, linear_attentions, make_transfer_loss
    from .cuda_graph_step import GraphedStep
    from .finetune import add_lora, make_finetune_loss
    from .surgery import set_mode
    from .training import build_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model, _ = build_model(ModelConfig(name_or_path=model_name, gguf_file=gguf_file, dtype="float32"))
    wrap = wrap or (lambda name, step: step)
    model.to(dev)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(dev)
    mask = torch.ones_like(ids)
    b = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    use_amp = precision != "no" and dev.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)) if use_amp else nullcontext
    tokens = batch * seq
    if not use_amp:  # without autocast every op computes in the weights' dtype: keep them all fp32
        frozen_dtype = "float32"
    elif frozen_dtype is None:  # autocast's compute dtype
        frozen_dtype = "bfloat16" if precision == "bf16" else "float16"
    out: dict = {"model": model_name, "method": method, "batch": batch, "seq": seq, "precision": precision if use_amp else "fp32",
                 "frozen_dtype": frozen_dtype,
                 "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}

    def run(fn):
        def step():
            with amp():
                loss = fn()
            loss.backward()
            for p in model.parameters():
                p.grad = None
        return step

    def run_graphed(m, loss_of_batch):
        """The same step captured in a CUDA graph (linearize.cuda_graph_step), as training runs it."""
        gs = GraphedStep(lambda mod, batch: (loss_of_batch(batch), {}), m, amp)
        return lambda: gs(b)

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    t = time_step(wrap("teacher", run(lambda: model(**b, use_cache=False).loss)), dev, warmup, iters)
    out["teacher"] = {"step_s": t, "tokens_per_s": tokens / t}
    if graph and dev.type == "cuda":
        t = time_step(wrap("teacher_graph", run_graphed(model, lambda batch: model(**batch, use_cache=False).loss)),
                      dev, warmup, iters)
        out["teacher_graph"] = {"step_s": t, "tokens_per_s": tokens / t}
        for p in model.parameters():
            p.grad = None

    convert(model, LinearizeConfig(method=method, **(linearize_options or {})))
    model.to(dev)
    freeze_all_but_new(model)
    store_frozen(model, getattr(torch, frozen_dtype))
    set_mode(model, "transfer")
    loss_fn = make_transfer_loss(linear_attentions(model))
    t = time_step(wrap("distill", run(lambda: loss_fn(model, b)[0])), dev, warmup, iters)
    out["distill"] = {"step_s": t, "tokens_per_s": tokens / t}
    if graph and dev.type == "cuda":
        t = time_step(wrap("distill_graph", run_graphed(model, lambda batch: loss_fn(model, batch)[0])), dev, warmup, iters)
        out["distill_graph"] = {"step_s": t, "tokens_per_s": tokens / t}
        for p in model.parameters():
            p.grad = None

    set_mode(model, "student")
    fcfg = FinetuneConfig()  # the recipe defaults
    peft_model = add_lora(model, fcfg)
    peft_model.to(dev)
    store_frozen(peft_model, getattr(torch, frozen_dtype))
    ft_loss = make_finetune_loss(peft_model, fcfg)  # what stage 2 trains on
    t = time_step(wrap("finetune", run(lambda: ft_loss(peft_model, b)[0])), dev, warmup, iters)
    out["finetune"] = {"step_s": t, "tokens_per_s": tokens / t}
    if graph and dev.type == "cuda":
        t = time_step(wrap("finetune_graph", run_graphed(peft_model, lambda batch: ft_loss(peft_model, batch)[0])),
                      dev, warmup, iters)
        out["finetune_graph"] = {"step_s": t, "tokens_per_s": tokens / t}
    for k in ("teacher_graph",) + STAGES:
        if k in out:
            out[k]["ratio_to_teacher"] = out[k]["tokens_per_s"] / out["teacher"]["tokens_per_s"]
            if k.endswith("_graph") and k != "teacher_graph" and "teacher_graph" in out:
                out[k]["ratio_to_teacher_graph"] = out[k]["tokens_per_s"] / out["teacher_graph"]["tokens_per_s"]
    if dev.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gguf-file", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--method", default="lizard")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "no"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-graph", action="store_true",
                    help="skip the CUDA-graph rows (teacher_graph, distill_graph, finetune_graph)")
    ap.add_argument("--frozen-dtype", default=None, choices=("bfloat16", "float16", "float32"),
                    help="storage of the converted model's frozen weights (default: autocast's dtype, as the "
                         "smollm2 recipes' model.dtype leaves them)")
    ap.add_argument("--json", default=None, help="also write the result to this JSON file ('-' = stdout only JSON)")
    a = ap.parse_args(argv)
    res = bench(a.model, a.batch, a.seq, a.method, a.precision, a.warmup, a.iters, a.device, a.gguf_file,
                graph=not a.no_graph, frozen_dtype=a.frozen_dtype)
    if a.json == "-":
        print(json.dumps(res, indent=1))
        return res
    print(f"{res['model']} {res['method']}  batch {res['batch']} x seq {res['seq']}  {res['precision']}  "
          f"frozen weights {res['frozen_dtype']}  on {res['device']}")
    print(f"{'':14s} {'tokens/s':>12s} {'step ms':>9s} {'vs teacher':>11s} {'vs teacher_graph':>17s}")
    for k in ("teacher", "teacher_graph") + STAGES:
        if k not in res:
            continue
        r = res[k]
        ratio = f"{r['ratio_to_teacher']:.2f}x" if "ratio_to_teacher" in r else "1.00x"
        ratio_g = f"{r['ratio_to_teacher_graph']:.2f}x" if "ratio_to_teacher_graph" in r else ""
        print(f"{k:14s} {r['tokens_per_s']:12.0f} {r['step_s'] * 1e3:9.1f} {ratio:>11s} {ratio_g:>17s}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
