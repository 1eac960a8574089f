"""Regenerate the local MMLU task YAMLs from lm-eval's installed ``mmlu/default`` definitions.

    python eval/tasks/mmlu/_generate.py

Writes one ``local_mmlu_<subject>.yaml`` per subject (description and category tag taken from
lm-eval's own file) plus the group files; prompts come from ``_local_mmlu_template_yaml``.
"""
from __future__ import annotations

from pathlib import Path

import lm_eval
import yaml

HERE = Path(__file__).parent
OFFICIAL = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
CATEGORIES = ("stem", "other", "social_sciences", "humanities")


def main() -> None:
    for old in HERE.glob("*.yaml"):
        old.unlink()
    for src in sorted(OFFICIAL.glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(src.read_text())
        subject = cfg["dataset_name"]
        out = {
            "include": "_local_mmlu_template_yaml",
            "task": f"local_mmlu_{subject}",
            "task_alias": subject,
            "dataset_kwargs": {"subject": subject},
            "description": cfg["description"],
            "tag": f"local_{cfg['tag']}",
        }
        (HERE / f"local_mmlu_{subject}.yaml").write_text(yaml.safe_dump(out, sort_keys=False, width=1000))
    for cat in CATEGORIES:
        group = {
            "group": f"local_mmlu_{cat}",
            "group_alias": cat,
            "task": [f"local_mmlu_{cat}_tasks"],
            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
            "metadata": {"version": 2},
        }
        (HERE / f"_local_mmlu_{cat}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    top = {
        "group": "local_mmlu",
        "task": [f"local_mmlu_{c}" for c in CATEGORIES],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    }
    (HERE / "_local_mmlu.yaml").write_text(
        "# MMLU (57 subjects, test split) from <data_dir>/mmlu, 5-shot from the dev split.\n"
        + yaml.safe_dump(top, sort_keys=False)
    )


if __name__ == "__main__":
    main()
