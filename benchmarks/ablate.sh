#!/usr/bin/env bash
# One ablation row of issue 7 per call: a reduced-budget run with recipe overrides, then the
# scores that move (zero-shot tasks whose tokens lie beyond the window, perplexity at 1K and 4K),
# through benchmarks/real_run.sh (run and files named abl-NAME).
#   bash benchmarks/ablate.sh NAME [--key=value recipe overrides]
#   e.g. bash benchmarks/ablate.sh window128 --linearize.window=128
#        bash benchmarks/ablate.sh seq2048   --data.seq_len=2048 --distill.batch_size=16 --finetune.batch_size=8
# Budget: ABL_DISTILL_STEPS / ABL_FINETUNE_STEPS (default 60 + 60 steps of the recipe's batch,
# about 2M + 2M tokens). The rows combine with: python benchmarks/ablation_table.py NAME=report.json ...
set -uo pipefail
name=abl-$1; shift
export RECIPE=${ABL_RECIPE:-recipes/smollm2-135m-lizard.yaml} TRAIN_LIMIT_S=${ABL_TRAIN_LIMIT_S:-300}
# ABL_PHASE=train or eval runs one of the two (benchmarks/ablate_queue.sh does); the status is that phase's
phase=${ABL_PHASE:-both}
if [ $phase != eval ]; then
  bash benchmarks/real_run.sh train $name --distill.steps=${ABL_DISTILL_STEPS:-60} \
      --finetune.steps=${ABL_FINETUNE_STEPS:-60} "$@" || exit
fi
[ $phase = train ] && exit 0
bash benchmarks/real_run.sh eval $name ${ABL_TASKS:-hellaswag,lambada_openai} --limit ${ABL_LIMIT:-1000} \
    --ppl-contexts 1024,4096 --ppl-file /tmp/corpus/smollm2-20m.val.npy --ppl-max-tokens 262144 --ppl-batch-size 8
