"""Teacher-vs-student evaluation report: lm-eval tasks, perplexity and recall probes.

:func:`run_report` evaluates both checkpoints on the local task suite through the ``linearized``
lm-eval model, optionally runs the recall probes and fixed-context perplexities, and writes to
``out_dir``:

* ``report.json``: config, per-(task, metric) rows, means, beyond-window shares, fixed-context
  perplexities, probe accuracies, raw metrics;
* ``report.md``:   table task | metric | teacher | student | recovery % | beyond_window %, plus the
  means over the zero-shot and over the few-shot tasks (primary metric each), a "Perplexity at
  fixed context" table and a probe table;
* ``report.png``:  grouped bars teacher vs student (accuracy tasks; perplexities on their own axis),
  fixed-context perplexity vs context, and probe accuracy vs context length.

Tasks are short names with an optional ``@k`` (``arc_easy@25``: 25 in-context examples); lm-eval's
``num_fewshot`` is global, so tasks are evaluated in one ``simple_evaluate`` call per few-shot count.
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

from .block_perplexity import block_perplexity, ppl_sources
from .compat import check_same_tokenizer, load_tokenizer_for
from .datadir import data_file
from .perplexity import token_perplexity
from .probes import ProbeConfig, run_probes
from .suite import DEFAULT_TASKS, TaskSpec, check_data, resolve_tasks, task_manager
from .window_share import RequestPositions, beyond_window_share, student_window

DEFAULT_WINDOW = 64
DEFAULT_PPL_MAX_TOKENS = 1_000_000

LOWER_IS_BETTER = ("perplexity", "bits_per_byte")


def _higher_is_better(metric: str) -> bool:
    return not any(k in metric for k in LOWER_IS_BETTER)


def recovery(teacher: float | None, student: float | None, higher_is_better: bool = True) -> float | None:
    """Student as % of teacher (inverted for lower-is-better metrics); None when undefined."""
    if teacher is None or student is None or any(map(math.isnan, (teacher, student))):
        return None
    num, den = (student, teacher) if higher_is_better else (teacher, student)
    return 100.0 * num / den if den else None


def _leaf_tasks(res: dict, name: str) -> list[str]:
    """The scored tasks under ``name`` (itself, or a group's subtasks, recursively)."""
    subs = res.get("group_subtasks", {}).get(name)
    if not subs:
        return [name]
    return [leaf for sub in subs for leaf in _leaf_tasks(res, sub)]


def _check_fewshot(res: dict, spec: TaskSpec) -> None:
    """Refuse to label a row ``@k`` unless lm-eval really used k examples for every scored task."""
    for leaf in _leaf_tasks(res, spec.local):
        used = (res.get("configs", {}).get(leaf) or {}).get("num_fewshot")
        if used is not None and int(used) != spec.num_fewshot:
            raise RuntimeError(f"task {spec.name}: lm-eval used num_fewshot={used} for {leaf}, "
                               f"expected {spec.num_fewshot}")


def evaluate_model(pretrained: str, specs: list[TaskSpec], *, limit: int | None = None, batch_size=1,
                   device: str | None = None, dtype: str = "auto", data_dir=None,
                   probes: ProbeConfig | None = None, text_file: str | None = None, seed: int = 1234,
                   window: int | None = None, ppl_tokens: dict[str, list[int]] | None = None,
                   ppl_contexts: list[int] | tuple[int, ...] = (), ppl_batch_size: int = 1,
                   cache_dir: str | None = None) -> dict:
    """Scores of one checkpoint.

    Returns ``{"tasks": {name: {metric: value}}, "beyond_window": {name: {...}}, "block_ppl":
    {"<source> ppl@<context>": {...}}, "probes": {...} | None}``. ``name`` is the spec's row name
    (``arc_easy@25``). ``window``: also count the scored tokens beyond it (see
    :mod:`.window_share`); ``ppl_tokens`` / ``ppl_contexts``: fixed-context perplexities (see
    :mod:`.block_perplexity`).
    ``cache_dir``: keep each score in a JSON file there (see :class:`ScoreCache`) and compute only
    what is missing, so a long evaluation can be split over several runs and a teacher scored once.
    """
    import lm_eval

    from .harness import LinearizedLM

    cache = ScoreCache(cache_dir, pretrained, limit=limit, seed=seed, window=window, dtype=dtype) if cache_dir else None
    out: dict = {"tasks": {}, "beyond_window": {}, "block_ppl": {}, "probes": None}
    # each fixed-context perplexity, named "<source> ppl@<context>", with the fingerprint of its tokens
    ppl_wanted = {f"{src} ppl@{c}": token_fingerprint(ids) for src, ids in (ppl_tokens or {}).items()
                  for c in ppl_contexts}
    if cache is not None:
        out, specs = cache.fill(out, specs, ppl_wanted)
        if probes is not None and cache.probes_for(probes) is not None:
            out["probes"], probes = cache.probes_for(probes), None
        if not specs and probes is None and all(k in out["block_ppl"] for k in ppl_wanted):
            return out
    lm = LinearizedLM(pretrained=pretrained, batch_size=batch_size, device=device, dtype=dtype)
    if specs:
        tm = task_manager(data_dir, **({"text_file": text_file} if text_file else {}))
        positions = RequestPositions(lm) if window is not None else None
        groups: dict[int | None, list[TaskSpec]] = {}
        for spec in specs:  # num_fewshot is global to simple_evaluate: one call per few-shot count
            groups.setdefault(spec.fewshot_override, []).append(spec)
        for k, group in groups.items():
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[s.local for s in group], limit=limit, task_manager=tm, log_samples=True,
                num_fewshot=k, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed,
            )
            for spec in group:
                _check_fewshot(res, spec)
                raw = res["results"][spec.local]
                metrics = {
                    m.split(",")[0]: float(v) for m, v in raw.items()
                    if "," in m and "_stderr" not in m and isinstance(v, (int, float))
                }
                if "word_perplexity" in metrics and spec.local in res.get("samples", {}):
                    metrics["token_perplexity"] = token_perplexity(res["samples"][spec.local], lm)
                out["tasks"][spec.name] = metrics
                if positions is not None:
                    samples = [x for leaf in _leaf_tasks(res, spec.local) for x in res["samples"].get(leaf, [])]
                    out["beyond_window"][spec.name] = beyond_window_share(samples, positions, window)
            del res
            if cache is not None:
                cache.save(out, ppl_wanted)
    for source, ids in (ppl_tokens or {}).items():
        for context in ppl_contexts:
            key = f"{source} ppl@{context}"
            if key in out["block_ppl"]:  # from the cache
                continue
            try:
                out["block_ppl"][key] = block_perplexity(lm.model, lm.tokenizer, ids, int(context),
                                                         batch_size=ppl_batch_size, device=lm.device)
            except ValueError as e:  # text shorter than one block: report it, keep the rest
                out["block_ppl"][key] = {"token_perplexity": None, "tokens": 0, "blocks": 0,
                                         "context": int(context), "error": str(e)}
    if probes is not None:
        out["probes"] = run_probes(lm.model, lm.tokenizer, probes, device=lm.device)
        if cache is not None:
            cache.save(out, ppl_wanted, probes)
    elif cache is not None:
        cache.save(out, ppl_wanted)
    del lm
    gc.collect()
    return out


def token_fingerprint(ids) -> str:
    """A short hash of a token sequence (a list or an integer array)."""
    import hashlib

    import numpy as np

    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


class ScoreCache:
    """One JSON file of a checkpoint's scores: ``<cache_dir>/<name>-<key>.json``.

    The key hashes what changes the scores: the checkpoint (its path and the modification times of
    its config and weights), limit, seed, window and dtype. Task rows, beyond-window shares and
    fixed-context perplexities are reused by name; probes only under the same probe settings.
    Written through a temporary file and a rename, after every group of tasks.
    """

    def __init__(self, cache_dir: str, pretrained: str, **settings):
        import hashlib

        stamp = [str(pretrained)]
        p = Path(str(pretrained))
        if p.exists():
            stamp = [str(p.resolve())] + [f"{f.name}:{f.stat().st_mtime_ns}" for f in sorted(p.glob("*"))
                                          if f.suffix in (".json", ".safetensors", ".bin", ".gguf")] if p.is_dir() \
                else [str(p.resolve()), str(p.stat().st_mtime_ns)]
        key = hashlib.sha1(json.dumps([stamp, settings], sort_keys=True, default=str).encode()).hexdigest()[:12]
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (p.name or "model"))[-40:]
        self.path = Path(cache_dir) / f"{name}-{key}.json"
        self.window = settings.get("window")
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def fill(self, out: dict, specs: list[TaskSpec], ppl_wanted: dict[str, str] | None = None
             ) -> tuple[dict, list[TaskSpec]]:
        """Copy cached scores into ``out``; return it and the specs still to evaluate. ``ppl_wanted``:
        {"<source> ppl@<context>": token fingerprint}; a cached perplexity is reused only for the
        same tokens (another held-out file under the same name is computed again)."""
        tasks, beyond = self.data.get("tasks", {}), self.data.get("beyond_window", {})
        todo = []
        for spec in specs:
            if spec.name in tasks and (self.window is None or spec.name in beyond):
                out["tasks"][spec.name] = tasks[spec.name]
                if spec.name in beyond:
                    out["beyond_window"][spec.name] = beyond[spec.name]
            else:
                todo.append(spec)
        cached = self.data.get("block_ppl", {})
        for key, fp in (ppl_wanted or {}).items():
            hit = cached.get(key)
            if hit is not None and hit.get("tokens_sha1") == fp:
                out["block_ppl"][key] = {k: v for k, v in hit.items() if k != "tokens_sha1"}
        return out, todo

    def probes_for(self, probes: ProbeConfig):
        """The cached probe accuracies under these settings, keyed like :func:`run_probes`'s
        ({probe: {length: acc}}, int lengths: JSON stored them as strings), or None."""
        hit = self.data.get("probes")
        if not hit or hit.get("config") != asdict(probes):
            return None
        return {probe: {int(n): acc for n, acc in by_len.items()} for probe, by_len in hit["result"].items()}

    def save(self, out: dict, ppl_wanted: dict[str, str] | None = None, probes: ProbeConfig | None = None) -> None:
        for k in ("tasks", "beyond_window"):
            self.data.setdefault(k, {}).update(out.get(k) or {})
        for key, val in (out.get("block_ppl") or {}).items():
            self.data.setdefault("block_ppl", {})[key] = {**val, "tokens_sha1": (ppl_wanted or {}).get(key)}
        if probes is not None:
            self.data["probes"] = {"config": asdict(probes), "result": out["probes"]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.path)


def build_rows(specs: list[TaskSpec], teacher: dict, student: dict, beyond: dict | None = None) -> list[dict]:
    """One row per (task, metric): teacher, student, recovery, primary flag, few-shot count, and the
    student's beyond-window share in % (``beyond_window``; None when not computed)."""
    rows = []
    beyond = beyond or {}
    for spec in specs:
        t, s = teacher["tasks"].get(spec.name, {}), student["tasks"].get(spec.name, {})
        share = (beyond.get(spec.name) or {}).get("share")
        metrics = sorted(set(t) | set(s), key=lambda m: (m != spec.primary, m))
        for m in metrics:
            hib = _higher_is_better(m)
            rows.append({
                "task": spec.name, "metric": m, "teacher": t.get(m), "student": s.get(m),
                "recovery": recovery(t.get(m), s.get(m), hib), "higher_is_better": hib,
                "primary": m == spec.primary, "zero_shot": spec.zero_shot, "num_fewshot": spec.num_fewshot,
                "beyond_window": None if share is None else 100.0 * share,
            })
    return rows


def block_ppl_rows(teacher: dict, student: dict) -> list[dict]:
    """Rows ``<source> ppl@<context>``: token perplexity, recovery = teacher / student, ratio = student / teacher."""
    rows = []
    for key, t in teacher.get("block_ppl", {}).items():
        s = student.get("block_ppl", {}).get(key, {})
        tv, sv = t.get("token_perplexity"), s.get("token_perplexity")
        source, _, ctx = key.partition(" ppl@")
        rows.append({
            "task": key, "source": source, "context": int(ctx), "metric": "token_perplexity",
            "teacher": tv, "student": sv, "recovery": recovery(tv, sv, False),
            "ratio": (sv / tv) if tv and sv is not None else None, "higher_is_better": False,
            "primary": True, "zero_shot": False, "num_fewshot": 0,
            "tokens": t.get("tokens"), "blocks": t.get("blocks"),
            **({"error": t.get("error") or s.get("error")} if t.get("error") or s.get("error") else {}),
        })
    return rows


def _mean(sel: list[dict]) -> dict | None:
    sel = [r for r in sel if r["teacher"] is not None and r["student"] is not None]
    if not sel:
        return None
    t = sum(r["teacher"] for r in sel) / len(sel)
    s = sum(r["student"] for r in sel) / len(sel)
    return {"tasks": [r["task"] for r in sel], "teacher": t, "student": s, "recovery": recovery(t, s)}


def zero_shot_mean(rows: list[dict]) -> dict | None:
    """Mean of the primary metric over zero-shot accuracy tasks; recovery is the ratio of the means."""
    return _mean([r for r in rows if r["primary"] and r["zero_shot"] and r["higher_is_better"]])


def few_shot_mean(rows: list[dict]) -> dict | None:
    """Mean of the primary metric over the accuracy tasks run with k > 0 examples (``arc_easy@25``, mmlu ...)."""
    return _mean([r for r in rows if r["primary"] and r["higher_is_better"] and r.get("num_fewshot", 0) > 0])


def _fmt(x, pct=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1f}" if pct else (f"{x:.4f}" if abs(x) < 100 else f"{x:.2f}")


def write_markdown(report: dict, path: Path) -> None:
    cfg = report["config"]
    window = cfg.get("window")
    lines = [
        "# Linearization report", "",
        f"- teacher: `{report['teacher']}`", f"- student: `{report['student']}`",
        f"- limit: {cfg['limit']} documents per task; data: `{cfg['data_dir']}`",
    ]
    if window is not None:
        lines.append(f"- window: {window} ({cfg.get('window_source', '')})")
    if report["rows"]:  # a probes- or perplexity-only run has no task table
        lines += ["", "| task | metric | teacher | student | recovery % | beyond_window % |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in report["rows"]:
            name = f"**{r['task']}**" if r["primary"] else r["task"]
            bw = _fmt(r.get("beyond_window"), True) if r["primary"] else ""
            lines.append(f"| {name} | {r['metric']} | {_fmt(r['teacher'])} | {_fmt(r['student'])} | "
                         f"{_fmt(r['recovery'], True)} | {bw} |")
        means = [("zero-shot", report.get("mean_zero_shot")), ("few-shot", report.get("mean_few_shot"))]
        for label, m in means:
            if m:
                lines.append(f"| **mean ({label})** | primary | {_fmt(m['teacher'])} | {_fmt(m['student'])} | "
                             f"{_fmt(m['recovery'], True)} | |")
        lines += [""] + [f"Mean ({label}): {', '.join(m['tasks'])}." for label, m in means if m]
        lines += ["Bold rows: the primary metric of each task (averaged in the means). `task@k`: k in-context "
                  "examples (mmlu: 5 from its dev split). Recovery: student / teacher (teacher / student for "
                  "perplexities)."]
        if window is not None:
            lines += [f"beyond_window %: share of the scored tokens at position >= {window} of the tokenised "
                      "request (context + continuation as the harness feeds it, BOS included, left-truncated "
                      "to the model's max length; perplexity tasks: all tokens of their rolling windows)."]
    bp = report.get("block_perplexity") or []
    if bp:
        lines += ["", "## Perplexity at fixed context", "",
                  "Token perplexity over non-overlapping blocks of `context` tokens (lower is better).", "",
                  "| source | context | scored tokens | teacher | student | student / teacher |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in bp:
            lines.append(f"| {r['source']} | {r['context']} | {r.get('tokens') or 0} | {_fmt(r['teacher'])} | "
                         f"{_fmt(r['student'])} | {_fmt(r['ratio'])} |")
        for r in bp:
            if r.get("error"):
                lines.append(f"\n{r['task']}: {r['error']}")
    if report.get("probes"):
        lines += ["", "## Recall probes (exact-match accuracy)", "", "| probe | length | teacher | student |",
                  "| --- | ---: | ---: | ---: |"]
        for probe, by_len in report["probes"]["teacher"].items():
            for length, acc in by_len.items():
                lines.append(f"| {probe} | {length} | {_fmt(acc)} | {_fmt(report['probes']['student'][probe][length])} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(report: dict, path: Path) -> None:
    """Grouped bars (primary metrics; perplexities on a second axis), fixed-context perplexity and probe curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prim = [r for r in report["rows"] if r["primary"]]
    acc = [r for r in prim if r["higher_is_better"]]
    ppl = [r for r in prim if not r["higher_is_better"]]
    bp = [r for r in report.get("block_perplexity") or [] if r["teacher"] is not None]
    panels = [p for p in (acc, ppl, bp) if p] + ([report["probes"]] if report.get("probes") else [])
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
    if bp:
        ax = axes.pop(0)
        for i, source in enumerate(dict.fromkeys(r["source"] for r in bp)):
            rs = sorted((r for r in bp if r["source"] == source), key=lambda r: r["context"])
            for who, style in (("teacher", "-"), ("student", "--")):
                pts = [(r["context"], r[who]) for r in rs if r[who] is not None]
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{i}", marker="o", label=f"{source} {who}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("token perplexity at fixed context")
        ax.legend(fontsize=7)
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
               dtype: str = "auto", text_file: str | None = None, seed: int = 1234, window: int | None = None,
               ppl_contexts: list[int] | None = None, ppl_max_tokens: int | None = DEFAULT_PPL_MAX_TOKENS,
               ppl_file: str | None = None, ppl_batch_size: int = 1, cache_dir: str | None = None) -> dict:
    """Evaluate teacher and student, write report.{json,md,png} into ``out_dir``; return the report dict.

    teacher / student: checkpoint dir, ``.gguf`` file or alias (``smollm2-135m``).
    tasks:  short names (``piqa``, ...; see :data:`linearize.eval.suite.SUITE`), each optionally with
            ``@k`` in-context examples (``arc_easy@25``, ``hellaswag@10``); list or comma string.
    limit:  documents per task (None = all).
    probes: a :class:`ProbeConfig`, a list of context lengths, or None to skip the recall probes.
    window: sliding window for the beyond-window share (default: the student's ``linearize.window``
            in its config.json, else 64).
    ppl_contexts: fixed-context perplexity at these lengths (e.g. ``[1024, 4096]``) on WikiText-2
            test and, with ``ppl_file`` (``.npy`` token ids, ``.txt``, ``.jsonl(.gz)``), a held-out slice;
            ``ppl_max_tokens`` text tokens per source at most (None = all).
    cache_dir: reuse and keep per-checkpoint scores there (:class:`ScoreCache`): the teacher is scored
            once for several students, and a long evaluation can be split over several runs.
    Raises ``UnknownTask``, ``DataFileMissing`` or ``TokenizerMismatch`` before any model is loaded.
    """
    specs = resolve_tasks(tasks) if tasks else []
    root = check_data(specs, data_dir)
    tok = load_tokenizer_for(teacher)
    check_same_tokenizer(tok, load_tokenizer_for(student))
    if isinstance(probes, (list, tuple)):
        probes = ProbeConfig(lengths=[int(n) for n in probes])
    if window is None:
        window, window_source = student_window(student, DEFAULT_WINDOW)
    else:
        window_source = "given"
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ppl_contexts = [int(c) for c in (ppl_contexts or [])]
    if any(c < 2 for c in ppl_contexts):
        raise ValueError(f"perplexity contexts must be >= 2 tokens, got {ppl_contexts}")
    ppl_tokens = None
    if ppl_contexts:
        data_file("wikitext-2/test.txt", root)  # DataFileMissing now, not after the teacher ran
        ppl_tokens = ppl_sources(tok, root, ppl_file=ppl_file, max_tokens=ppl_max_tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    kw = dict(limit=limit, batch_size=batch_size, device=device, dtype=dtype, data_dir=root,
              probes=probes, text_file=text_file, seed=seed, ppl_tokens=ppl_tokens, ppl_contexts=ppl_contexts,
              ppl_batch_size=ppl_batch_size, cache_dir=cache_dir)
    t0 = time.time()
    scores = {"teacher": evaluate_model(teacher, specs, **kw)}
    scores["student"] = evaluate_model(student, specs, window=window, **kw)
    rows = build_rows(specs, scores["teacher"], scores["student"], scores["student"]["beyond_window"])
    report = {
        "teacher": teacher, "student": student,
        "config": {"tasks": [s.name for s in specs], "limit": limit, "batch_size": batch_size, "device": device,
                   "dtype": dtype, "data_dir": str(root), "seed": seed,
                   "probes": asdict(probes) if probes is not None else None,
                   "window": int(window), "window_source": window_source, "ppl_contexts": ppl_contexts,
                   "ppl_max_tokens": ppl_max_tokens, "ppl_file": ppl_file},
        "rows": rows,
        "mean_zero_shot": zero_shot_mean(rows),
        "mean_few_shot": few_shot_mean(rows),
        "beyond_window": scores["student"]["beyond_window"],
        "block_perplexity": block_ppl_rows(scores["teacher"], scores["student"]),
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
