"""Harness throughput: the student under ``linearized`` beside the teacher under lm-eval's plain
``hf`` model, same tasks, same batch size, same documents, one run.

    python -m linearize.eval.bench --teacher smollm2-135m --student DIR --tasks piqa,hellaswag \
        --limit 500 --batch-size 32 [--json out.json]

Prints wall seconds and documents/s for each and the ratio student / teacher. A third row, the
teacher under ``linearized``, separates what the batched scoring (``eval/scoring.py``) gains from
what the student's model costs: student / teacher-under-linearized is the model alone.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _requests(results: dict) -> int:
    n = 0
    for task, cfg in results.get("n-samples", {}).items():
        n += int(cfg.get("effective", 0))
    return n


def time_model(model: str, model_args: dict, tasks: list[str], limit, batch_size, device, data_dir=None) -> dict:
    import lm_eval

    from .suite import resolve_tasks, task_manager

    names = [s.local for s in resolve_tasks(tasks)]
    tm = task_manager(data_dir)
    lm = lm_eval.api.registry.get_model(model).create_from_arg_obj(
        model_args, {"batch_size": batch_size, "device": device})
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=tm, log_samples=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "documents": _requests(res), "docs_per_s": _requests(res) / dt,
            "results": {t: {k: v for k, v in r.items() if isinstance(v, (int, float))} for t, r in res["results"].items()}}


def bench(teacher: str, student: str, tasks: list[str], limit=None, batch_size=32, device=None, data_dir=None,
          dtype="bfloat16") -> dict:
    import linearize.eval  # noqa: F401  (registers "linearized")
    from linearize.loading import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # the teacher under lm-eval's own "hf" model: it takes a loaded model object, so GGUF/aliases work
    t_model, t_tok = load_model(teacher, dtype=dtype, device=device)
    out = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
           "tasks": tasks, "limit": limit, "batch_size": batch_size, "dtype": dtype}
    out["teacher_hf"] = time_model("hf", {"pretrained": t_model, "tokenizer": t_tok}, tasks, limit, batch_size,
                                   device, data_dir)
    out["teacher_linearized"] = time_model("linearized", {"pretrained": t_model, "tokenizer": t_tok}, tasks, limit,
                                           batch_size, device, data_dir)
    del t_model
    out["student_linearized"] = time_model("linearized", {"pretrained": student, "dtype": dtype}, tasks, limit,
                                           batch_size, device, data_dir)
    out["ratio_docs_per_s"] = out["student_linearized"]["docs_per_s"] / out["teacher_hf"]["docs_per_s"]
    out["ratio_model_only"] = out["student_linearized"]["docs_per_s"] / out["teacher_linearized"]["docs_per_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m linearize.eval.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", required=True)
    ap.add_argument("--tasks", default="piqa,hellaswag")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    r = bench(a.teacher, a.student, a.tasks.split(","), a.limit, a.batch_size, a.device, a.data_dir, a.dtype)
    print(f"{'model':<24}{'seconds':>10}{'docs':>8}{'docs/s':>10}")
    for k in ("teacher_hf", "teacher_linearized", "student_linearized"):
        print(f"{k:<24}{r[k]['seconds']:>10.1f}{r[k]['documents']:>8}{r[k]['docs_per_s']:>10.1f}")
    print(f"student (linearized) / teacher (hf): {r['ratio_docs_per_s']:.2f}x on {r['device']}; "
          f"student / teacher, both under linearized: {r['ratio_model_only']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
