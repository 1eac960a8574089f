"""The training loop with and without CUDA-graph steps (linearize.cuda_graph_step) on the GPU: a
SmolLM2-shaped random model (4 layers) converted to Lizard, stage 1 and stage 2 for 12 steps each on
random tokens, bf16 autocast, grad_accum 2; prints both runs' losses, their largest difference and
the tokens/s of the last steps.
    python3 benchmarks/check_graph_training.py"""
import copy
import json
import os
import tempfile

import numpy as np
import torch

import linearize.kernels  # noqa: F401
from linearize import LinearizeConfig, convert
from linearize.attention_transfer import distill
from linearize.data import BlockDataset
from linearize.finetune import finetune
from linearize.kernels.bench import smollm2_like
from linearize.recipes import DistillConfig, FinetuneConfig, RunConfig
from linearize.training import read_metrics

base = convert(smollm2_like(None, "cuda", torch.float32, num_layers=4)[0], LinearizeConfig(method="lizard"))
rng = np.random.default_rng(0)
data = BlockDataset(rng.integers(0, 49152, 64 * 1024 * 16).astype(np.uint16), 1024)
out = {}
for graph in (False, True):
    m = copy.deepcopy(base)
    with tempfile.TemporaryDirectory() as d:
        stage = dict(steps=12, batch_size=4, grad_accum=2, mixed_precision="bf16", warmup_steps=2, eval_every=0,
                     ckpt_every=0, cuda_graph=graph)
        rc = RunConfig(distill=DistillConfig(lr=1e-2, **stage), finetune=FinetuneConfig(lr=1e-3, **stage), output_dir=d)
        distill(m, data, rc, progress=False)
        finetune(m, None, data, rc, progress=False, save=False)
        rows = {s: read_metrics(os.path.join(d, s, "metrics.jsonl")) for s in ("distill", "finetune")}
    out[graph] = {s: ([r["loss"] for r in rs], float(np.mean([r["tokens_per_s"] for r in rs[-6:]]))) for s, rs in rows.items()}
for s in ("distill", "finetune"):
    (le, te), (lg, tg) = out[False][s], out[True][s]
    print(f"{s}: eager losses {np.round(le, 4).tolist()}")
    print(f"{s}: graph losses {np.round(lg, 4).tolist()}")
    print(f"{s}: max |diff| {max(abs(a - b) for a, b in zip(le, lg)):.2e}; tok/s eager {te:.0f}, graph {tg:.0f} ({tg / te:.2f}x)")
print(json.dumps({str(k): v for k, v in out.items()}))
