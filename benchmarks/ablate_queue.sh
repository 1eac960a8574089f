#!/usr/bin/env bash
# Ablation rows (benchmarks/ablate.sh) spread over as many device calls as they need, on one warm
# machine. Every call runs the same command; what is on the machine (a row's trained model, its
# cached scores, a done-marker) says where to go on. A call starts no training with less than
# QUEUE_TRAIN_S seconds left before its deadline (QUEUE_BUDGET_S after it began), and an evaluation
# is stopped at the deadline with its scores so far cached, to go on in the next call.
#   ABL_RECIPE=recipes/smollm2-135m-lizard-retrieval3.yaml ABL_LIMIT=1000 \
#   ABL_TASKS=piqa,arc_easy,arc_challenge,hellaswag,winogrande,lambada_openai,arc_easy@25,arc_challenge@25,hellaswag@10,mmlu \
#   bash benchmarks/ablate_queue.sh "r3base" "r3gate32 --linearize.gate_rank=32" ...
# Everything the rows wrote so far (logs, metrics, reports, score caches) comes back in one
# $OUT/ablations.tar.gz; the line "queue: N of M rows done" says when to stop calling.
set -uo pipefail
t_end=$(( $(date +%s) + ${QUEUE_BUDGET_S:-560} ))
left() { echo $(( t_end - $(date +%s) )); }
back=$OUT
export OUT=/tmp/ablout  # the rows' files outlive the call (the device empties $OUT before each)
mkdir -p $OUT
source benchmarks/gpu_env.sh
done_rows=0 rows=$#
for row in "$@"; do
  set -- $row; name=$1
  R=/tmp/run-abl-$name
  if [ ! -f $R/eval.done ]; then
    if [ ! -f $R/merged/config.json ]; then
      [ $(left) -lt ${QUEUE_TRAIN_S:-170} ] && break
      echo "== $name: train ($(left) s left)"
      ABL_PHASE=train bash benchmarks/ablate.sh "$@" | tail -n 2 || { echo "== $name: training failed"; continue; }
    fi
    [ $(left) -lt 45 ] && break
    echo "== $name: eval ($(left) s left)"
    ABL_PHASE=eval EVAL_LIMIT_S=$(( $(left) - 15 )) bash benchmarks/ablate.sh "$@" > $OUT/last_eval.txt 2>&1 \
      && touch $R/eval.done
    head -n 1 $OUT/last_eval.txt
  fi
  [ -f $R/eval.done ] && done_rows=$(( done_rows + 1 ))
done
echo "queue: $done_rows of $rows rows done"
tar czf $back/ablations.tar.gz -C $OUT --exclude='*.pt' --exclude='*.safetensors' .
ls -la $back
