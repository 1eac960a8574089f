#!/usr/bin/env bash
# The real conversion runs of issue 7 on the lent GPU, one phase per device call (each < 10 min).
#   bash benchmarks/real_run.sh train METHOD [--key=value recipe overrides]    both stages, no eval
#   RESUME=1 bash benchmarks/real_run.sh train METHOD [...]                   continue a killed run
#   bash benchmarks/real_run.sh restore METHOD [overrides]   rebuild /tmp/run-METHOD/merged from
#        .carry/METHOD_run/ (the artifacts an earlier train call brought back) on a fresh machine;
#        pass the train call's overrides that change the model (e.g. --linearize.softmax_layers=...)
#   bash benchmarks/real_run.sh eval METHOD TASKS [extra eval args]            teacher vs student report
# Training is stopped (SIGINT, then the last checkpoint stays on the machine) before the call limit.
# Small artifacts (the stage-1 parameters, the LoRA adapter) come back in $OUT, so a lost machine
# loses no training. Scores are cached per checkpoint in /tmp/cache-METHOD (copied to $OUT): a
# later eval call on the same warm machine reuses them and adds the new tasks to one report; the
# teacher's committed caches (benchmarks/*/cache/) seed it, so the teacher is scored once.
# METHOD names the run (/tmp/run-METHOD, the files in $OUT) and its recipe,
# recipes/smollm2-135m-METHOD.yaml, unless RECIPE=path says otherwise (benchmarks/ablate.sh does).
# Needs benchmarks/gpu_env.sh's setup (wheels, GGUF in /tmp/m, eval data, /tmp/corpus/smollm2-20m.npy).
set -uo pipefail
source benchmarks/gpu_env.sh
phase=$1; method=$2; shift 2
R=/tmp/run-$method
recipe=${RECIPE:-recipes/smollm2-135m-$method.yaml}
case $phase in
train)
  t0=$(date +%s)
  timeout -s INT ${TRAIN_LIMIT_S:-540} python3 -m linearize run ${RESUME:+--resume} $recipe \
      --data.token_file=/tmp/corpus/smollm2-20m.npy --eval.tasks=[] --output_dir=$R "$@" >> $OUT/train_$method.log 2>&1
  rc=$?; echo "rc=$rc wall_s=$(( $(date +%s) - t0 ))"; tail -c 1500 $OUT/train_$method.log
  for s in distill finetune; do cp $R/$s/metrics.jsonl $OUT/${s}_metrics_$method.jsonl 2>/dev/null; done
  cp $R/distill/linear_attention.pt $OUT/linear_attention_$method.pt 2>/dev/null
  cp $R/adapter/adapter_model.safetensors $OUT/adapter_$method.safetensors 2>/dev/null
  cp $R/adapter/adapter_config.json $OUT/adapter_config_$method.json 2>/dev/null ;;
restore)
  mkdir -p $R/distill $R/adapter
  cp .carry/${method}_run/linear_attention_$method.pt $R/distill/linear_attention.pt
  cp .carry/${method}_run/adapter_$method.safetensors $R/adapter/adapter_model.safetensors
  cp .carry/${method}_run/adapter_config_$method.json $R/adapter/adapter_config.json
  python3 -m linearize merge $recipe --output_dir=$R "$@" 2>&1 | tail -1 ;;
eval)
  tasks=$1; shift
  # the teacher's scores from earlier sessions (its cache key is the alias plus the settings, so only
  # scores under the same limit, seed, window and dtype are reused); the student is always scored
  # (newest session first: cp -n keeps the first copy of a file name, and later caches hold more)
  # (this machine's other runs first: an ablation batch scores the teacher in its first row only)
  mkdir -p /tmp/cache-$method && { ls -t /tmp/cache-*/smollm2-135m-*.json; ls -r benchmarks/*/cache/smollm2-135m-*.json; } 2>/dev/null \
      | xargs -I{} cp -n {} /tmp/cache-$method/ 2>/dev/null
  t0=$(date +%s)
  # stopped before the call limit (EVAL_LIMIT_S) so the scores cached so far still come back
  timeout -s INT ${EVAL_LIMIT_S:-540} python3 -m linearize eval --teacher smollm2-135m --student $R/merged --tasks "$tasks" --device cuda \
      --dtype bfloat16 --batch-size ${EVAL_BS:-256} --cache-dir /tmp/cache-$method --out $R/eval "$@" \
      >> $OUT/eval_$method.log 2>&1
  rc=$?; echo "rc=$rc wall_s=$(( $(date +%s) - t0 ))"; tail -c 3000 $OUT/eval_$method.log
  cp $R/eval/report.md $OUT/report_$method.md; cp $R/eval/report.json $OUT/report_$method.json
  mkdir -p $OUT/cache-$method && cp /tmp/cache-$method/*.json $OUT/cache-$method/ 2>/dev/null
  [ -n "${KEEP_PNG-}" ] && cp $R/eval/report.png $OUT/report_$method.png 2>/dev/null ;;
*) echo "unknown phase $phase (train | restore | eval)"; exit 2 ;;
esac
exit ${rc:-0}  # train and eval: their python's status (130 or 124 when stopped at the limit)
