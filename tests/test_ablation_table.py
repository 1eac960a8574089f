"""benchmarks/ablation_table.py: issue 7's two means from the rows of one or more reports."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "ablation_table", Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_table.py")
ablation_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation_table)


def _row(task, teacher, student, primary=True, metric="acc"):
    return {"task": task, "metric": metric, "teacher": teacher, "student": student, "primary": primary}


def test_means_need_every_task_and_join_reports(tmp_path):
    zero = {"rows": [_row(t, 0.5, 0.4) for t in ablation_table.ZERO_SHOT]
            + [_row("piqa", 9.0, 0.0, primary=False, metric="acc_norm")],  # a secondary metric must not count
            "block_perplexity": [{"task": "wikitext ppl@1024", "ratio": 1.25}]}
    few_a = {"rows": [_row("arc_easy@25", 0.6, 0.6), _row("arc_challenge@25", 0.3, 0.3)]}
    few_b = {"rows": [_row("hellaswag@10", 0.4, 0.2), _row("mmlu", 0.3, 0.3)]}
    paths = []
    for i, rep in enumerate((zero, few_a, few_b)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(rep))

    alone = ablation_table.summarise([few_a])
    assert "few-shot recovery %" not in alone  # two of the four few-shot tasks: no mean

    row = ablation_table.summarise([zero, few_a, few_b])
    assert row["zero-shot recovery %"] == pytest.approx(80.0)
    assert row["few-shot recovery %"] == pytest.approx(100 * 1.4 / 1.6)  # mean of sums, not of ratios
    assert row["wikitext ppl@1024 ratio"] == 1.25

    out = tmp_path / "t.md"
    ablation_table.main([f"base={paths[0]}+{paths[1]}+{paths[2]}", f"zero={paths[0]}", "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2].startswith("| base | 80.0 | 87.5 | 1.250")
    assert lines[3] == "| zero | 80.0 |  | 1.250 |"


def test_bad_argument_names_the_form():
    with pytest.raises(SystemExit, match="NAME=path"):
        ablation_table.main(["just-a-path.json"])
