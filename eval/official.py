"""lm-eval's OWN task definitions (from the installed package), fed from the local data files.

Used to check that the local tasks render exactly what lm-eval's official tasks render, and handy
offline: ``official_task("piqa")`` is lm-eval's ``piqa`` task reading ``<data_dir>/piqa``.
Splits the local data lacks (e.g. PIQA ``train``) are switched off in the config.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import loaders

# lm-eval task name -> (YAML path under lm_eval/tasks, loader, loader kwargs)
OFFICIAL: dict[str, tuple[str, object, dict]] = {
    "piqa": ("piqa/piqa.yaml", loaders.load_piqa, {}),
    "arc_easy": ("arc/arc_easy.yaml", loaders.load_arc, {"subset": "ARC-Easy"}),
    "arc_challenge": ("arc/arc_challenge.yaml", loaders.load_arc, {"subset": "ARC-Challenge"}),
    "hellaswag": ("hellaswag/hellaswag.yaml", loaders.load_hellaswag, {}),
    "winogrande": ("winogrande/default.yaml", loaders.load_winogrande, {}),
    "lambada_openai": ("lambada/lambada_openai.yaml", loaders.load_lambada_openai, {}),
    "wikitext": ("wikitext/wikitext.yaml", loaders.load_wikitext, {}),
    "openbookqa": ("openbookqa/openbookqa.yaml", loaders.load_openbookqa, {}),
    "boolq": ("super_glue/boolq/default.yaml", loaders.load_boolq, {}),
    "copa": ("super_glue/copa/default.yaml", loaders.load_copa, {}),
}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def official_yaml(name: str) -> Path:
    """Path of lm-eval's YAML for task ``name`` (``mmlu_<subject>`` included)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    if name.startswith("mmlu_"):
        path = root / "mmlu" / "default" / f"{name}.yaml"
    elif name in OFFICIAL:
        path = root / OFFICIAL[name][0]
    else:
        raise KeyError(f"no offline mapping for lm-eval task {name!r}; known: {', '.join(OFFICIAL)}, mmlu_<subject>")
    if not path.is_file():
        from lm_eval.tasks import TaskManager  # layout changed: ask lm-eval's index (slow)

        path = Path(TaskManager().task_index[name].yaml_path)
    return path


def official_task(name: str, data_dir: str | os.PathLike | None = None):
    """Build lm-eval's own ``name`` task (a ``ConfigurableTask``) over the local files."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = dict(load_yaml(official_yaml(name), resolve_func=True))
    if name.startswith("mmlu_"):
        loader, kwargs = loaders.load_mmlu, {"subject": cfg["dataset_name"]}
    else:
        _, loader, kwargs = OFFICIAL[name]
    dataset = loader(data_dir, **kwargs)
    cfg["custom_dataset"] = lambda **_: dataset
    cfg["dataset_kwargs"] = None
    for key in SPLIT_KEYS:
        if cfg.get(key) is not None and cfg[key] not in dataset:
            cfg[key] = None
    for key in ("tag", "group", "include"):
        cfg.pop(key, None)
    return ConfigurableTask(config=cfg)
