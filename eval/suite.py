"""The offline task suite: short names (``piqa``) -> local lm-eval tasks (``local_piqa``).

Task YAMLs live in ``eval/tasks/`` (installed as ``linearize/eval/tasks``); load them with
:func:`task_manager`. Hub task names (``piqa``) still work for users with internet through an
ordinary ``TaskManager()``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .datadir import DataFileMissing, resolve_data_dir

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class TaskSpec:
    """One suite entry.

    short:      name on the command line (``piqa``).
    local:      lm-eval task or group name in ``eval/tasks`` (``local_piqa``).
    official:   lm-eval's own task name for the same benchmark (``piqa``).
    primary:    metric used for the summary mean (LoLCATs / Lizard convention).
    zero_shot:  counted in the "mean over zero-shot tasks" row.
    files:      paths under the data dir that must exist (files or folders).
    num_fewshot: in-context examples per scored item (``arc_easy@25`` on the command line); the
                suite's value is the task's own default (0, or 5 for mmlu).
    """

    short: str
    local: str
    official: str
    primary: str
    zero_shot: bool = True
    files: tuple[str, ...] = ()
    num_fewshot: int = 0

    @property
    def higher_is_better(self) -> bool:
        return "perplexity" not in self.primary and "bits" not in self.primary

    @property
    def name(self) -> str:
        """Row name in the report: ``arc_easy``, or ``arc_easy@25`` when k differs from the task's default."""
        default = SUITE[self.short].num_fewshot if self.short in SUITE else 0
        return self.short if self.num_fewshot == default else f"{self.short}@{self.num_fewshot}"

    @property
    def fewshot_override(self) -> int | None:
        """``num_fewshot`` to hand lm-eval, or None to keep the task YAML's own default."""
        default = SUITE[self.short].num_fewshot if self.short in SUITE else None
        return None if self.num_fewshot == default else self.num_fewshot


SUITE: dict[str, TaskSpec] = {s.short: s for s in (
    TaskSpec("piqa", "local_piqa", "piqa", "acc", files=("piqa/valid.jsonl", "piqa/valid-labels.lst")),
    TaskSpec("arc_easy", "local_arc_easy", "arc_easy", "acc",
             files=tuple(f"arc/ARC-Easy-{s}.jsonl" for s in ("Train", "Dev", "Test"))),
    TaskSpec("arc_challenge", "local_arc_challenge", "arc_challenge", "acc_norm",
             files=tuple(f"arc/ARC-Challenge-{s}.jsonl" for s in ("Train", "Dev", "Test"))),
    TaskSpec("hellaswag", "local_hellaswag", "hellaswag", "acc_norm", files=("hellaswag/hellaswag_val_full.txt",)),
    TaskSpec("winogrande", "local_winogrande", "winogrande", "acc", files=("winogrande/dev.jsonl",)),
    TaskSpec("lambada_openai", "local_lambada_openai", "lambada_openai", "acc", files=("lambada_openai/test.jsonl",)),
    TaskSpec("openbookqa", "local_openbookqa", "openbookqa", "acc_norm", files=("openbookqa/test.jsonl",)),
    TaskSpec("boolq", "local_boolq", "boolq", "acc", files=("boolq/val.jsonl",)),
    TaskSpec("copa", "local_copa", "copa", "acc", files=("copa/val.jsonl",)),
    TaskSpec("mmlu", "local_mmlu", "mmlu", "acc", zero_shot=False, files=("mmlu/test", "mmlu/dev"), num_fewshot=5),
    TaskSpec("wikitext", "local_wikitext", "wikitext", "word_perplexity", zero_shot=False,
             files=("wikitext-2/test.txt", "wikitext-2/valid.txt")),
)}

DEFAULT_TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "lambada_openai")


class UnknownTask(ValueError):
    """A task name that is neither a short name nor a local task name."""


class BadTaskSpec(UnknownTask):
    """A task spec whose ``@k`` few-shot count is not usable (not an integer >= 0, or a perplexity task)."""


def parse_task_spec(text: str) -> tuple[str, int | None]:
    """``"arc_easy@25"`` -> ``("arc_easy", 25)``; ``"piqa"`` -> ``("piqa", None)``; bad ``k`` raises BadTaskSpec."""
    name, sep, k = text.strip().partition("@")
    name = name.strip()
    if not sep:
        return name, None
    k = k.strip()
    if not k.isdigit():  # isdigit: no sign, no blanks, no decimal point
        raise BadTaskSpec(f"bad few-shot count in task {text.strip()!r}: write <task>@<k> with k an integer >= 0 "
                          "(e.g. arc_easy@25)")
    return name, int(k)


def resolve_tasks(names: str | list[str]) -> list[TaskSpec]:
    """Map short names (or ``local_*`` names), each optionally with ``@k`` few-shot examples, to specs.

    ``arc_easy@25``: ARC-Easy with 25 in-context examples (``zero_shot`` False, row name ``arc_easy@25``);
    ``mmlu`` keeps its 5 shots, ``mmlu@0`` asks for none. Unknown names raise :class:`UnknownTask`
    listing the known ones; a bad ``k`` (or ``@k`` on a perplexity task) raises :class:`BadTaskSpec`.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    by_local = {s.local: s for s in SUITE.values()}
    specs, unknown = [], []
    for n in (n.strip() for n in names):
        if not n:
            continue
        base, k = parse_task_spec(n)
        spec = SUITE.get(base) or by_local.get(base)
        if spec is not None and k is not None and k != spec.num_fewshot:
            if not spec.higher_is_better:
                raise BadTaskSpec(f"task {n!r}: {spec.short} is a perplexity task and takes no few-shot examples")
            spec = replace(spec, num_fewshot=k, zero_shot=spec.zero_shot and k == 0)
        (specs if spec else unknown).append(spec or n)
    if unknown:
        raise UnknownTask(f"unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(SUITE)} "
                          "(add @k for k in-context examples, e.g. arc_easy@25)")
    if not specs:
        raise UnknownTask(f"no tasks given; known tasks: {', '.join(SUITE)}")
    return list(dict.fromkeys(specs))


def check_data(specs: list[TaskSpec], data_dir: str | os.PathLike | None = None) -> Path:
    """Raise :class:`DataFileMissing` naming the first missing file; returns the data dir."""
    root = resolve_data_dir(data_dir)
    for spec in specs:
        for rel in spec.files:
            if not (root / rel).exists():
                raise DataFileMissing(
                    f"task {spec.short}: missing data file {root / rel} (data dir {root}; set it with "
                    "--data-dir, data_dir=..., or the LINEARIZE_DATA environment variable)"
                )
    return root


def task_manager(data_dir: str | os.PathLike | None = None, include_defaults: bool = False, **metadata):
    """lm-eval TaskManager that knows the local tasks and reads data from ``data_dir``.

    include_defaults: also index lm-eval's ~10k built-in tasks (slower; needed for hub names).
    metadata: extra task metadata, e.g. ``text_file=...`` for ``local_text_ppl``.
    """
    from lm_eval.tasks import TaskManager

    meta = {"data_dir": str(resolve_data_dir(data_dir)), **metadata}
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults, metadata=meta)
