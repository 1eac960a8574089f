"""The feature-dim-128 ablation row faulted (CUDA illegal memory access) in the harness's scoring
forward on the H100, twice (sessions 7 and 8), while check_feature_dim.py's plain forwards passed.
This runs the scoring path itself (eval.scoring.score: bucketed widths, rows = max_tokens // width,
CUDA-graph capture after two eager warm-ups, glue eager) on a SmolLM2-shaped model with random
weights converted with the recipe's exact linearize settings, on synthetic multiple-choice requests
whose lengths span the harness's buckets. Each width runs in its own process, so one fault does not
hide the others; run with CUDA_LAUNCH_BLOCKING=1 so a fault names its kernel.
    CUDA_LAUNCH_BLOCKING=1 python3 benchmarks/check_feature_dim_scoring.py [feature_dim ...]
    python3 benchmarks/check_feature_dim_scoring.py --one FEATURE_DIM WIDTH   (one case, in-process)
"""
import os
import subprocess
import sys

RECIPE = os.environ.get("RECIPE", "recipes/smollm2-135m-lizard-retrieval3.yaml")
WIDTHS = [int(w) for w in os.environ.get("WIDTHS", "64,128,192,256,320,512,1024").split(",")]
NUM_LAYERS = int(os.environ.get("NUM_LAYERS", "30"))
SOFTMAX = [int(i) for i in os.environ.get("SOFTMAX", "").split(",") if i]  # overrides the recipe's softmax_layers
PLAIN = os.environ.get("PLAIN") == "1"  # one plain forward of the first batch's shape instead of scoring
MAX_ROWS, MAX_TOKENS = 256, 32768  # what benchmarks/real_run.sh's eval passes (EVAL_BS, max_batch_tokens)


def one(feature_dim: int, width: int) -> None:
    import dataclasses
    import random

    import torch

    import linearize.kernels  # noqa: F401
    from linearize.eval import scoring
    from linearize import convert
    from linearize.kernels.bench import smollm2_like
    from linearize.recipes import load_recipe

    lcfg = load_recipe(RECIPE).linearize
    lcfg = dataclasses.replace(lcfg, feature_dim=feature_dim,
                               softmax_layers=[i for i in SOFTMAX or lcfg.softmax_layers if i < NUM_LAYERS])
    teacher, _ = smollm2_like(None, "cuda", torch.bfloat16, num_layers=NUM_LAYERS)
    model = convert(teacher, lcfg).to("cuda", torch.bfloat16).eval()
    rnd = random.Random(width)
    # two batches of rows whose padded width lands in this bucket, four choices per item
    n_rows = 2 * scoring.rows_for(width, MAX_ROWS, MAX_TOKENS)
    pairs = []
    for _ in range(n_rows // 4 + 1):
        ctx = [rnd.randrange(1, 49152) for _ in range(rnd.randint(max(1, width - 63), width - 8))]
        for _ in range(4):
            pairs.append((ctx, [rnd.randrange(1, 49152) for _ in range(rnd.randint(1, 8))]))
    if PLAIN:
        from linearize.attention.fusion import suspended

        x = torch.randint(1, 49152, (scoring.rows_for(width, MAX_ROWS, MAX_TOKENS), width), device="cuda")
        with torch.no_grad(), suspended():
            model.model(input_ids=x, use_cache=False)
        torch.cuda.synchronize()
        print(f"feature_dim={feature_dim} plain forward {tuple(x.shape)}: ok", flush=True)
        return
    out = scoring.score(model, pairs, max_length=2048, max_rows=MAX_ROWS, max_tokens=MAX_TOKENS)
    torch.cuda.synchronize()
    bad = sum(not (s == s) for s, _ in out)
    print(f"feature_dim={feature_dim} width={width} rows/batch={scoring.rows_for(width, MAX_ROWS, MAX_TOKENS)} "
          f"{len(pairs)} requests: ok, {bad} NaN scores", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    dims = [int(a) for a in sys.argv[1:]] or [64, 128]
    failed = []
    for fd in dims:
        for w in WIDTHS:
            r = subprocess.run([sys.executable, __file__, "--one", str(fd), str(w)], capture_output=True, text=True)
            if r.returncode == 0:
                print(r.stdout.strip().splitlines()[-1], flush=True)
            else:
                failed.append((fd, w))
                print(f"feature_dim={fd} width={w}: FAILED (rc {r.returncode})\n" + r.stderr[-2500:], flush=True)
    print("failed:", failed or "none")
    sys.exit(1 if failed else 0)
