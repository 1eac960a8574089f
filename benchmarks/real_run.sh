#!/usr/bin/env bash
# The real conversion runs of issue 7 on the lent GPU, one phase per device call (each < 10 min).
#   bash benchmarks/real_run.sh train METHOD [DISTILL_STEPS FINETUNE_STEPS]   both stages, no eval
#   [RESUME=1] bash benchmarks/real_run.sh distill|finetune METHOD [DISTILL_STEPS FINETUNE_STEPS]
#        one stage per call: the recipe's 1000 + 1000 steps took longer than one 10-minute call
#        on the host-bound H100 (23-28K tokens/s at batch 8); keep the machine warm between calls
#   bash benchmarks/real_run.sh eval  METHOD TASKS [extra eval args]            teacher vs student report
# Needs benchmarks/gpu_env.sh's setup (wheels, GGUF in /tmp/m, eval data, /tmp/corpus/smollm2-20m.npy).
set -uo pipefail
source benchmarks/gpu_env.sh
phase=$1; method=$2; shift 2
R=/tmp/run-$method
case $phase in
train)
  ds=${1:-1000}; fs=${2:-1000}
  python3 -m linearize run recipes/smollm2-135m-$method.yaml --data.token_file=/tmp/corpus/smollm2-20m.npy \
      --distill.steps=$ds --finetune.steps=$fs --eval.tasks=[] --output_dir=$R > $OUT/train_$method.log 2>&1
  echo "rc=$?"; tail -c 1500 $OUT/train_$method.log
  for s in distill finetune; do
    cp $R/$s/metrics.jsonl $OUT/${s}_metrics_$method.jsonl 2>/dev/null
    [ -n "${KEEP_PNG-}" ] && cp $R/$s/loss.png $OUT/${s}_loss_$method.png 2>/dev/null
  done ;;
distill|finetune)
  ds=${1:-1000}; fs=${2:-1000}
  python3 -m linearize $phase ${RESUME:+--resume} recipes/smollm2-135m-$method.yaml --data.token_file=/tmp/corpus/smollm2-20m.npy \
      --distill.steps=$ds --finetune.steps=$fs --eval.tasks=[] --output_dir=$R >> $OUT/${phase}_$method.log 2>&1
  echo "rc=$?"; tail -c 1500 $OUT/${phase}_$method.log
  cp $R/$phase/metrics.jsonl $OUT/${phase}_metrics_$method.jsonl 2>/dev/null ;;
eval)
  tasks=$1; shift
  python3 -m linearize eval --teacher smollm2-135m --student $R/merged --tasks "$tasks" --device cuda \
      --batch-size 64 --out $R/eval "$@" > $OUT/eval_$method.log 2>&1
  echo "rc=$?"; tail -c 3000 $OUT/eval_$method.log
  cp $R/eval/report.md $OUT/report_$method.md; cp $R/eval/report.json $OUT/report_$method.json
  [ -n "${KEEP_PNG-}" ] && cp $R/eval/report.png $OUT/report_$method.png 2>/dev/null ;;
esac
