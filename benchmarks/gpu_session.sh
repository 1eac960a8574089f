#!/usr/bin/env bash
# What the lent H100 ran for the numbers in benchmarks/ (see each run's README for its variables).
# Prerequisites carried from a CPU machine:
#   .carry/whl/     wheels missing on the GPU image (lm-eval stack, gguf, transformers 5.23)
#   .carry/corpus/  python -m linearize.data --model smollm2-135m --out .carry/corpus/smollm2-corpus.npy --max-tokens 12e6
#                   (first 8M tokens kept)
#   .carry/data/    the evaluation sets from ../shared/data (without corpus/ and mmlu/)
#   /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf assembled from two halves carried in two earlier calls
# Variables: BENCH_METHODS (bench_train for each), RUN_METHOD (a short two-stage run + eval),
#            STEPS, LIMIT, EVAL_BENCH=1 (lm-eval throughput, teacher hf vs student), GEN_BENCH=1.
set -uo pipefail
source benchmarks/gpu_env.sh || exit 1
[ -d .carry/data ] && export LINEARIZE_DATA=$PWD/.carry/data  # the first session's carried copy
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"

for method in ${BENCH_METHODS-}; do
  python3 -m linearize bench train --model smollm2-135m --batch 16 --seq 1024 --method $method \
      --json $OUT/bench_train_$method.json > $OUT/bench_train_$method.log 2>&1; tail -5 $OUT/bench_train_$method.log
done
if [ -n "${RUN_METHOD-}" ]; then
  R=/tmp/run-$RUN_METHOD
  python3 -m linearize run recipes/smollm2-135m-$RUN_METHOD.yaml --data.token_file=.carry/corpus/smollm2-corpus.npy \
      --distill.steps=${STEPS:-300} --finetune.steps=${STEPS:-300} --eval.limit=${LIMIT:-500} --eval.batch_size=64 \
      --output_dir=$R > $OUT/run_$RUN_METHOD.log 2>&1; tail -c 2500 $OUT/run_$RUN_METHOD.log
  cp $R/eval/report.md $OUT/report_$RUN_METHOD.md; cp $R/eval/report.json $OUT/report_$RUN_METHOD.json
  cp $R/distill/metrics.jsonl $OUT/distill_metrics_$RUN_METHOD.jsonl; cp $R/finetune/metrics.jsonl $OUT/finetune_metrics_$RUN_METHOD.jsonl
fi
if [ -n "${EVAL_BENCH-}" ]; then
  [ -d /tmp/student ] || python3 -m linearize convert --model smollm2-135m --method lizard --out /tmp/student > /dev/null 2>&1
  python3 -m linearize.eval.bench --teacher smollm2-135m --student /tmp/student --tasks piqa,hellaswag \
      --limit 1000 --batch-size 32 --json $OUT/bench_eval.json > $OUT/bench_eval.log 2>&1; tail -4 $OUT/bench_eval.log
fi
if [ -n "${GEN_BENCH-}" ]; then
  python3 -m linearize bench generate --real --batch 1 16 --prompt 1024 16384 --methods lizard --compile on \
      --json $OUT/bench_generate.json > $OUT/bench_generate.log 2>&1; tail -20 $OUT/bench_generate.log
fi
