"""``linearize eval``: compare a teacher with its linearized student.

    python -m linearize eval --teacher smollm2-135m --student out/student \\
        --tasks piqa,arc_easy,arc_easy@25,hellaswag@10,mmlu --limit 200 --out runs/eval \\
        --batch-size 8 --device cpu [--probes 1024,2048,4096] [--ppl-contexts 1024,4096 --ppl-file heldout.npy]

Tasks: short names, each optionally with @k in-context examples (arc_easy@25, hellaswag@10; mmlu is
5-shot from its dev split). Each task row also gives the share of scored tokens beyond --window.

Wire it in with ``add_eval_parser(subparsers)``; the parser's ``func`` default runs the command.
"""
from __future__ import annotations

import argparse

from .suite import DEFAULT_TASKS, SUITE


def _int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an ``argparse`` subparsers object and return its parser."""
    p = subparsers.add_parser(
        "eval", help="evaluate teacher vs student on offline lm-eval tasks, perplexity and recall probes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", required=True, help="teacher checkpoint: dir, .gguf file or alias (smollm2-135m)")
    p.add_argument("--student", required=True, help="student (converted) checkpoint dir")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated, from: {', '.join(SUITE)}; append @k for k in-context examples, "
                        "e.g. arc_easy@25,hellaswag@10 (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    p.add_argument("--out", default=None, help="output dir for report.{json,md,png} (default: runs/eval/<time>)")
    p.add_argument("--batch-size", default="1", help="lm-eval batch size: an int or 'auto'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="model dtype: auto, float32, bfloat16 ...")
    p.add_argument("--data-dir", default=None, help="local data dir (default: $LINEARIZE_DATA or ../shared/data)")
    p.add_argument("--probes", type=_int_list, default=None, metavar="LENGTHS",
                   help="run MQAR + passkey probes at these context lengths, e.g. 1024,2048,4096,8192,16384")
    p.add_argument("--probe-samples", type=int, default=8, help="sequences per probe and length")
    p.add_argument("--text-file", default=None, help="text file for the local_text_ppl task")
    p.add_argument("--window", type=int, default=None,
                   help="sliding window for the 'beyond_window %%' column (default: the student's linearize.window "
                        "from its config.json, else 64)")
    p.add_argument("--ppl-contexts", type=_int_list, default=None, metavar="LENGTHS",
                   help="token perplexity at these fixed context lengths, e.g. 1024,4096, on WikiText-2 test "
                        "and the --ppl-file slice")
    p.add_argument("--ppl-max-tokens", type=int, default=1_000_000,
                   help="tokens per fixed-context perplexity source at most; 0 = all (default: %(default)s)")
    p.add_argument("--ppl-file", default=None, metavar="PATH",
                   help="held-out slice for fixed-context perplexity: .npy token ids (e.g. uint16; used as is), "
                        ".txt, or .jsonl/.jsonl.gz ({\"text\": ...} a line)")
    p.add_argument("--ppl-batch-size", type=int, default=1, help="blocks per forward for fixed-context perplexity")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="keep per-checkpoint scores here and compute only what is missing (score a teacher once, "
                        "split a long evaluation over several runs)")
    p.set_defaults(func=run_eval_command)
    return p


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``linearize eval`` from parsed arguments; prints the markdown table; returns 0."""
    from .probes import ProbeConfig
    from .report import default_out_dir, run_report

    batch = args.batch_size if args.batch_size == "auto" or str(args.batch_size).startswith("auto") else int(args.batch_size)
    probes = ProbeConfig(lengths=args.probes, num_samples=args.probe_samples, seed=args.seed) if args.probes else None
    report = run_report(
        teacher=args.teacher, student=args.student, tasks=args.tasks, limit=args.limit,
        out_dir=args.out or default_out_dir(), batch_size=batch, device=args.device, probes=probes,
        data_dir=args.data_dir, dtype=args.dtype, text_file=args.text_file, seed=args.seed,
        window=args.window, ppl_contexts=args.ppl_contexts, ppl_max_tokens=args.ppl_max_tokens or None,
        ppl_file=args.ppl_file, ppl_batch_size=args.ppl_batch_size, cache_dir=args.cache_dir,
    )
    with open(report["files"]["md"], encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {', '.join(report['files'].values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m linearize.eval.cli eval --teacher ... --student ...``."""
    parser = argparse.ArgumentParser(prog="linearize")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
