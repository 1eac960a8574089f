#!/usr/bin/env bash
# One ablation row of issue 7 per call: a reduced-budget run with recipe overrides, then the
# scores that move (zero-shot tasks whose tokens lie beyond the window, perplexity at 1K and 4K).
#   bash benchmarks/ablate.sh NAME [--key=value recipe overrides]
#   e.g. bash benchmarks/ablate.sh window128 --linearize.window=128
#        bash benchmarks/ablate.sh seq4096   --data.seq_len=4096 --distill.batch_size=8 --finetune.batch_size=4
# Budget: ABL_DISTILL_STEPS / ABL_FINETUNE_STEPS (default 60 + 60 steps of the recipe's batch,
# about 2M + 2M tokens). The rows combine with: python benchmarks/ablation_table.py NAME=report.json ...
set -uo pipefail
source benchmarks/gpu_env.sh
name=$1; shift
R=/tmp/abl-$name
recipe=${ABL_RECIPE:-recipes/smollm2-135m-lizard.yaml}
t0=$(date +%s)
timeout -s INT ${ABL_TRAIN_LIMIT_S:-300} python3 -m linearize run $recipe --data.token_file=/tmp/corpus/smollm2-20m.npy \
    --distill.steps=${ABL_DISTILL_STEPS:-60} --finetune.steps=${ABL_FINETUNE_STEPS:-60} --eval.tasks=[] \
    --output_dir=$R "$@" > $OUT/train_$name.log 2>&1
echo "train rc=$? wall_s=$(( $(date +%s) - t0 ))"
mkdir -p /tmp/cache-abl && cp -n benchmarks/*/cache/smollm2-135m-*.json /tmp/cache-abl/ 2>/dev/null
python3 -m linearize eval --teacher smollm2-135m --student $R/merged --tasks ${ABL_TASKS:-hellaswag,lambada_openai} \
    --limit ${ABL_LIMIT:-1000} --device cuda --dtype bfloat16 --batch-size 256 --cache-dir /tmp/cache-abl \
    --ppl-contexts 1024,4096 --ppl-file /tmp/corpus/smollm2-20m.val.npy --ppl-max-tokens 262144 --ppl-batch-size 8 \
    --out $R/eval > $OUT/eval_$name.log 2>&1
echo "eval rc=$? wall_s=$(( $(date +%s) - t0 ))"
cp $R/eval/report.json $OUT/report_$name.json && cp $R/eval/report.md $OUT/report_$name.md && tail -n 25 $R/eval/report.md
