"""``python -m linearize``: a thin argparse front over the library.

    convert   checkpoint -> linearized checkpoint          (surgery.convert + save_pretrained)
    generate  stream text from a (converted) checkpoint
    distill | finetune | run   the training stages          (train_cli.py)
    eval      teacher vs. student report                    (linearize.eval.cli)
    bench     train | decode | chunk | generate benchmarks  (bench_train.py, linearize.kernels.bench)
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time

from .config import METHODS, LinearizeConfig


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {s!r}")


def add_convert_parser(sub):
    p = sub.add_parser("convert", help="swap softmax attention for a linear attention and save the result",
                       description="Convert a HF causal LM (dir, hub id, .gguf, or 'smollm2-135m') to a linear-attention model.")
    p.add_argument("--model", required=True, help="checkpoint dir, hub id, .gguf file, or smollm2-135m")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--method", required=True, help=f"one of {', '.join(m for m in METHODS if m != 'softmax')}")
    p.add_argument("--window", type=int, default=LinearizeConfig.window, help="sliding-window size (hedgehog, lizard)")
    p.add_argument("--feature-dim", type=int, default=LinearizeConfig.feature_dim)
    p.add_argument("--num-meta-tokens", type=int, default=LinearizeConfig.num_meta_tokens)
    p.add_argument("--gate-rank", type=int, default=LinearizeConfig.gate_rank)
    p.add_argument("--num-slots", type=int, default=LinearizeConfig.num_slots)
    p.add_argument("--softmax-layers", type=_int_list, default=[], help="layers kept as softmax, e.g. 0,15")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    # validate everything cheap before loading weights, so bad input fails fast and writes nothing
    lcfg = LinearizeConfig(method=args.method, window=args.window, feature_dim=args.feature_dim,
                           num_meta_tokens=args.num_meta_tokens, gate_rank=args.gate_rank,
                           num_slots=args.num_slots, softmax_layers=args.softmax_layers)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    from .loading import load_model
    from .surgery import convert, count_new_parameters

    model, tok = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype)
    before = sum(p.numel() for p in model.parameters())
    convert(model, lcfg)
    n_new = count_new_parameters(model)
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:  # write beside --out, then rename: a failure never leaves a half-written checkpoint
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"converted {args.model} -> {out}: method={lcfg.method}, {n_new:,} new parameters "
          f"({100 * n_new / before:.2f}% of {before:,}); softmax layers: {lcfg.softmax_layers or 'none'}")
    return 0


def add_generate_parser(sub):
    p = sub.add_parser("generate", help="stream a completion from a checkpoint",
                       description="Greedy/sampled generation with the recurrent state (constant memory).")
    p.add_argument("model", help="converted checkpoint dir (or any checkpoint load_model accepts)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    p.add_argument("--no-fast", action="store_true",
                   help="use HF generate even on CUDA (default there: Triton kernels + CUDA graph)")
    p.add_argument("--compile", action="store_true",
                   help="fast path: fuse the decode step's elementwise glue with torch.compile "
                        "(a few seconds of warm-up; about 2x faster decoding on an H100)")
    p.set_defaults(func=cmd_generate)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def cmd_generate(args) -> int:
    import torch
    from transformers import TextStreamer

    from .loading import load_model

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    model, tok = load_model(args.model, dtype=dtype, device=args.device)
    text = args.prompt
    if args.chat and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt").to(args.device)
    if args.device.startswith("cuda") and not args.no_fast and getattr(model.config, "linearize", None):
        return _fast_generate(model, tok, enc, args)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             temperature=args.temperature if args.do_sample else None, top_p=None, top_k=None,
                             streamer=streamer, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    n = out.shape[1] - enc["input_ids"].shape[1]
    print(f"\n[{n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s on {args.device}]", file=sys.stderr)
    return 0


def _fast_generate(model, tok, enc, args) -> int:
    """Stream with the Triton decode kernels and a CUDA-graph step (linearize.generation)."""
    from .generation import stream_generate

    stats = None
    for new, stats in stream_generate(model, enc["input_ids"], args.max_new_tokens, enc.get("attention_mask"),
                                      temperature=args.temperature if args.do_sample else 0.0,
                                      eos_token_id=tok.eos_token_id, compile=args.compile):
        print(tok.decode(new[0], skip_special_tokens=True), end="", flush=True)
    if stats is not None:
        print(f"\n[{stats.new_tokens} tokens: {stats.tokens_per_s:.1f} tokens/s, prefill {stats.prefill_s:.2f} s, "
              f"CUDA graph {'on' if stats.graph else 'off'}]", file=sys.stderr)
    return 0


def add_bench_parser(sub):
    p = sub.add_parser("bench", help="benchmarks: train (stage throughput), decode | chunk | generate (kernels)")
    bsub = p.add_subparsers(dest="bench_what", metavar="WHAT")
    bsub.required = True
    bsub.add_parser("train", add_help=False, help="stage-1/stage-2 tokens/s beside the teacher's fwd+bwd "
                                                      "(options: python -m linearize.bench_train --help)")
    try:
        from .kernels.bench import add_bench_subcommands
    except ImportError:  # no Triton on this platform: kernel benchmarks unavailable
        return
    add_bench_subcommands(bsub)


# sub-commands that live beside their subsystem: (module, function that adds parsers)
EXTERNAL_PARSERS = [
    ("linearize.train_cli", "add_train_parsers"),
    ("linearize.eval.cli", "add_eval_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m linearize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_convert_parser(sub)
    add_generate_parser(sub)
    add_bench_parser(sub)
    for module, fn in EXTERNAL_PARSERS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a subsystem not installed in this build: leave its commands out
            if e.name != module:
                raise
            continue
        getattr(mod, fn)(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "train"]:  # its own argparse takes every option that follows
        importlib.import_module("linearize.bench_train").main(argv[2:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        if os.environ.get("LINEARIZE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
