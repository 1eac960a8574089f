"""One Markdown table from several teacher-vs-student reports (``report.json`` of ``linearize eval``).

    python benchmarks/ablation_table.py NAME=path/report.json [NAME=...] [--out table.md]

Columns: the zero-shot and few-shot means (recovery %) over the tasks each report scored, and every
fixed-context perplexity ratio (student / teacher). Rows keep the order given, the first being the
baseline the others are read against.
"""
import argparse
import json


def summarise(report: dict) -> dict:
    row = {}
    for key, label in (("mean_zero_shot", "zero-shot"), ("mean_few_shot", "few-shot")):
        m = report.get(key)
        if m:
            row[f"{label} recovery %"] = m["recovery"]
    for r in report.get("block_perplexity") or []:
        row[f"{r['task']} ratio"] = r["ratio"]
    return row


def table(named: list[tuple[str, dict]]) -> str:
    rows = [(name, summarise(rep)) for name, rep in named]
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
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"{item!r}: expected NAME=path/to/report.json")
        with open(path) as f:
            named.append((name, json.load(f)))
    text = table(named)
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
