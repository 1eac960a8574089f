"""One Markdown table from several teacher-vs-student reports (``report.json`` of ``linearize eval``).

    python benchmarks/ablation_table.py NAME=path/report.json[+path/more.json] [NAME=...] [--out table.md]

Columns: issue 7's two means (recovery %: zero-shot over its six tasks, few-shot over arc_easy@25,
arc_challenge@25, hellaswag@10 and mmlu; blank unless a row's reports scored all of them) and every
fixed-context perplexity ratio (student / teacher). Reports joined with ``+`` are one student's. Rows keep the order given, the first being the
baseline the others are read against.
"""
import argparse
import json


ZERO_SHOT = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "lambada_openai")
FEW_SHOT = ("arc_easy@25", "arc_challenge@25", "hellaswag@10", "mmlu")


def bar_mean(rows: list[dict], tasks: tuple[str, ...]) -> float | None:
    """Recovery % of the mean primary score over ``tasks`` (issue 7's bar), or None if one is missing."""
    prim = {r["task"]: r for r in rows if r.get("primary")}
    if not all(t in prim for t in tasks):
        return None
    teacher = sum(prim[t]["teacher"] for t in tasks)
    return 100.0 * sum(prim[t]["student"] for t in tasks) / teacher


def summarise(reports: list[dict]) -> dict:
    """One row from one or more reports of the same student (later reports add to earlier ones)."""
    rows = {(r["task"], r["metric"]): r for rep in reports for r in rep.get("rows", [])}
    row = {}
    for label, tasks in (("zero-shot", ZERO_SHOT), ("few-shot", FEW_SHOT)):
        m = bar_mean(list(rows.values()), tasks)
        if m is not None:
            row[f"{label} recovery %"] = m
    for rep in reports:
        for r in rep.get("block_perplexity") or []:
            row[f"{r['task']} ratio"] = r["ratio"]
    return row


def table(named: list[tuple[str, list[dict]]]) -> str:
    rows = [(name, summarise(reps)) for name, reps in named]
    cols = list(dict.fromkeys(c for _, r in rows for c in r))
    out = ["| variant | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for name, r in rows:
        out.append(f"| {name} | " + " | ".join("" if c not in r else f"{r[c]:.3f}" if "ratio" in c else f"{r[c]:.1f}"
                                            for c in cols) + " |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    named = []
    for item in a.reports:
        name, _, paths = item.partition("=")
        if not paths:
            raise SystemExit(f"{item!r}: expected NAME=path/to/report.json[+path/to/another.json]")
        reps = []
        for path in paths.split("+"):
            with open(path) as f:
                reps.append(json.load(f))
        named.append((name, reps))
    text = table(named)
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
