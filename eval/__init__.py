"""linearize.eval: offline lm-eval tasks, the ``linearized`` lm-eval model, recall probes, reports.

Importing this package registers the lm-eval model ``linearized`` (see :mod:`.harness`).

    from linearize.eval import run_report
    run_report("smollm2-135m", "out/student", tasks=["piqa", "arc_easy"], limit=200, out_dir="runs/eval")

Modules: ``datadir`` (where data lives), ``loaders`` (local files -> hub schema), ``suite`` (short
names and ``@k`` few-shot specs, TaskManager), ``official`` (lm-eval's own tasks on local files),
``harness`` (lm-eval model), ``probes`` (MQAR / passkey), ``perplexity``, ``block_perplexity``
(token perplexity at a fixed context), ``window_share`` (scored tokens beyond a sliding window),
``compat`` (tokenizer check), ``template_cache`` (lm-eval's prompt templates compiled once; installed
on import), ``scoring`` (batched loglikelihoods), ``report``, ``cli``.
"""
from . import template_cache
from .block_perplexity import block_perplexity
from .compat import TokenizerMismatch, check_same_tokenizer
from .datadir import DataFileMissing, resolve_data_dir
from .harness import LinearizedLM
from .probes import ProbeConfig, run_probes
from .report import run_report
from .suite import SUITE, TASKS_DIR, BadTaskSpec, TaskSpec, UnknownTask, resolve_tasks, task_manager
from .window_share import beyond_window_share

template_cache.install()

__all__ = [
    "LinearizedLM", "ProbeConfig", "run_probes", "run_report", "SUITE", "TASKS_DIR", "TaskSpec",
    "task_manager", "resolve_tasks", "resolve_data_dir", "check_same_tokenizer",
    "DataFileMissing", "UnknownTask", "BadTaskSpec", "TokenizerMismatch", "block_perplexity", "beyond_window_share",
]
