"""Teacher-vs-student evaluation report: lm-eval tasks, perplexity and recall probes.

:func:`run_report` evaluates both checkpoints on the local task suite through the ``linearized``
lm-eval model, optionally runs the recall probes, and writes to ``out_dir``:

* ``report.json``: config, per-(task, metric) rows, means, probe accuracies, raw metrics;
* ``report.md``:   table task | metric | teacher | student | recovery %, plus the mean over the
  zero-shot tasks (primary metric each) and a probe table;
* ``report.png``:  grouped bars teacher vs student (accuracy tasks; perplexities on their own axis)
  and probe accuracy vs context length.

Recovery % is ``100 * student / teacher`` for higher-is-better metrics and ``100 * teacher / student``
for perplexities (lower is better), so 100 % means "no loss" either way.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

from .compat import check_same_tokenizer, load_tokenizer_for
from .perplexity import token_perplexity
from .probes import ProbeConfig, run_probes
from .suite import DEFAULT_TASKS, TaskSpec, check_data, resolve_tasks, task_manager

LOWER_IS_BETTER = ("perplexity", "bits_per_byte")


def _higher_is_better(metric: str) -> bool:
    return not any(k in metric for k in LOWER_IS_BETTER)


def recovery(teacher: float | None, student: float | None, higher_is_better: bool = True) -> float | None:
    """Student as % of teacher (inverted for lower-is-better metrics); None when undefined."""
    if teacher is None or student is None or any(map(math.isnan, (teacher, student))):
        return None
    num, den = (student, teacher) if higher_is_better else (teacher, student)
    return 100.0 * num / den if den else None


def evaluate_model(pretrained: str, specs: list[TaskSpec], *, limit: int | None = None, batch_size=1,
                   device: str | None = None, dtype: str = "auto", data_dir=None,
                   probes: ProbeConfig | None = None, text_file: str | None = None, seed: int = 1234) -> dict:
    """Scores of one checkpoint: ``{"tasks": {short: {metric: value}}, "probes": {...} | None}``."""
    import lm_eval

    from .harness import LinearizedLM

    lm = LinearizedLM(pretrained=pretrained, batch_size=batch_size, device=device, dtype=dtype)
    out: dict = {"tasks": {}, "probes": None}
    if specs:
        tm = task_manager(data_dir, **({"text_file": text_file} if text_file else {}))
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[s.local for s in specs], limit=limit, task_manager=tm, log_samples=True,
            bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        for spec in specs:
            raw = res["results"][spec.local]
            metrics = {
                k.split(",")[0]: float(v) for k, v in raw.items()
                if "," in k and "_stderr" not in k and isinstance(v, (int, float))
            }
            if "word_perplexity" in metrics and spec.local in res.get("samples", {}):
                metrics["token_perplexity"] = token_perplexity(res["samples"][spec.local], lm)
            out["tasks"][spec.short] = metrics
    if probes is not None:
        out["probes"] = run_probes(lm.model, lm.tokenizer, probes, device=lm.device)
    del lm
    gc.collect()
    return out


def build_rows(specs: list[TaskSpec], teacher: dict, student: dict) -> list[dict]:
    """One row per (task, metric) with teacher, student, recovery and whether it is the primary metric."""
    rows = []
    for spec in specs:
        t, s = teacher["tasks"].get(spec.short, {}), student["tasks"].get(spec.short, {})
        metrics = sorted(set(t) | set(s), key=lambda m: (m != spec.primary, m))
        for m in metrics:
            hib = _higher_is_better(m)
            rows.append({
                "task": spec.short, "metric": m, "teacher": t.get(m), "student": s.get(m),
                "recovery": recovery(t.get(m), s.get(m), hib), "higher_is_better": hib,
                "primary": m == spec.primary, "zero_shot": spec.zero_shot,
            })
    return rows


def zero_shot_mean(rows: list[dict]) -> dict | None:
    """Mean of the primary metric over zero-shot accuracy tasks; recovery is the ratio of the means."""
    sel = [r for r in rows if r["primary"] and r["zero_shot"] and r["higher_is_better"]
           and r["teacher"] is not None and r["student"] is not None]
    if not sel:
        return None
    t = sum(r["teacher"] for r in sel) / len(sel)
    s = sum(r["student"] for r in sel) / len(sel)
    return {"tasks": [r["task"] for r in sel], "teacher": t, "student": s, "recovery": recovery(t, s)}


def _fmt(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1f}" if pct else (f"{x:.4f}" if abs(x) < 100 else f"{x:.2f}")


def write_markdown(report: dict, path: Path) -> None:
    cfg = report["config"]
    lines = [
        "# Linearization report", "",
        f"- teacher: `{report['teacher']}`", f"- student: `{report['student']}`",
        f"- limit: {cfg['limit']} documents per task; data: `{cfg['data_dir']}`", "",
        "| task | metric | teacher | student | recovery % |", "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        name = f"**{r['task']}**" if r["primary"] else r["task"]
        lines.append(f"| {name} | {r['metric']} | {_fmt(r['teacher'])} | {_fmt(r['student'])} | {_fmt(r['recovery'], True)} |")
    m = report.get("mean_zero_shot")
    if m:
        lines.append(f"| **mean (zero-shot)** | primary | {_fmt(m['teacher'])} | {_fmt(m['student'])} | {_fmt(m['recovery'], True)} |")
    lines += ["", "Bold rows: the primary metric, averaged in the zero-shot mean "
              f"({', '.join(m['tasks']) if m else 'none'}). Recovery: student / teacher "
              "(teacher / student for perplexities)."]
    if report.get("probes"):
        lines += ["", "## Recall probes (exact-match accuracy)", "", "| probe | length | teacher | student |",
                  "| --- | ---: | ---: | ---: |"]
        for probe, by_len in report["probes"]["teacher"].items():
            for length, acc in by_len.items():
                lines.append(f"| {probe} | {length} | {_fmt(acc)} | {_fmt(report['probes']['student'][probe][length])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(report: dict, path: Path) -> None:
    """Grouped bars (primary metrics; perplexities on a second axis) and probe curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prim = [r for r in report["rows"] if r["primary"]]
    acc = [r for r in prim if r["higher_is_better"]]
    ppl = [r for r in prim if not r["higher_is_better"]]
    panels = [p for p in (acc, ppl) if p] + ([report["probes"]] if report.get("probes") else [])
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5 + 3 * len(panels), 4), squeeze=False)
    axes = list(axes[0])
    for rows in (acc, ppl):
        if not rows:
            continue
        ax = axes.pop(0)
        x = range(len(rows))
        w = 0.38
        ax.bar([i - w / 2 for i in x], [r["teacher"] or 0 for r in rows], w, label="teacher")
        ax.bar([i + w / 2 for i in x], [r["student"] or 0 for r in rows], w, label="student")
        ax.set_xticks(list(x), [f"{r['task']}\n{r['metric']}" for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("perplexity (lower is better)" if rows is ppl else "score (higher is better)")
        ax.legend()
    if report.get("probes"):
        ax = axes.pop(0)
        for who, style in (("teacher", "-"), ("student", "--")):
            for probe, by_len in report["probes"][who].items():
                lens = sorted(by_len, key=int)
                ax.plot([int(n) for n in lens], [by_len[n] for n in lens], style, marker="o", label=f"{probe} {who}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("recall accuracy")
        ax.legend(fontsize=7)
    fig.suptitle("teacher vs student")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_report(teacher: str, student: str, tasks: list[str] | str = DEFAULT_TASKS, limit: int | None = None,
               out_dir: str = "runs/eval", batch_size: int | str = 1, device: str | None = None,
               probes: ProbeConfig | list[int] | None = None, data_dir: str | None = None,
               dtype: str = "auto", text_file: str | None = None, seed: int = 1234) -> dict:
    """Evaluate teacher and student, write report.{json,md,png} into ``out_dir``; return the report dict.

    teacher / student: checkpoint dir, ``.gguf`` file or alias (``smollm2-135m``).
    tasks:  short names (``piqa``, ...; see :data:`linearize.eval.suite.SUITE`), list or comma string.
    limit:  documents per task (None = all).
    probes: a :class:`ProbeConfig`, a list of context lengths, or None to skip the recall probes.
    Raises ``UnknownTask``, ``DataFileMissing`` or ``TokenizerMismatch`` before any model is loaded.
    """
    specs = resolve_tasks(tasks) if tasks else []
    root = check_data(specs, data_dir)
    check_same_tokenizer(load_tokenizer_for(teacher), load_tokenizer_for(student))
    if isinstance(probes, (list, tuple)):
        probes = ProbeConfig(lengths=[int(n) for n in probes])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    kw = dict(limit=limit, batch_size=batch_size, device=device, dtype=dtype, data_dir=root,
              probes=probes, text_file=text_file, seed=seed)
    t0 = time.time()
    scores = {"teacher": evaluate_model(teacher, specs, **kw)}
    scores["student"] = evaluate_model(student, specs, **kw)
    rows = build_rows(specs, scores["teacher"], scores["student"])
    report = {
        "teacher": teacher, "student": student,
        "config": {"tasks": [s.short for s in specs], "limit": limit, "batch_size": batch_size, "device": device,
                   "dtype": dtype, "data_dir": str(root), "seed": seed,
                   "probes": asdict(probes) if probes is not None else None},
        "rows": rows,
        "mean_zero_shot": zero_shot_mean(rows),
        "probes": ({w: scores[w]["probes"] for w in ("teacher", "student")} if probes is not None else None),
        "raw": {w: scores[w]["tasks"] for w in ("teacher", "student")},
        "seconds": round(time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(report, out / "report.md")
    write_plot(report, out / "report.png")
    report["files"] = {k: str(out / f"report.{k}") for k in ("json", "md", "png")}
    return report


def default_out_dir() -> str:
    return os.path.join("runs", "eval", time.strftime("%Y%m%d-%H%M%S"))
