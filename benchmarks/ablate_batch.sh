#!/usr/bin/env bash
# Several ablation rows (benchmarks/ablate.sh) in one device call, each packed into one tar of its
# logs, metrics and report (the device brings back only a few files per call; the row's weights
# and score cache stay on the machine).
#   ABL_RECIPE=recipes/smollm2-135m-lizard-retrieval3.yaml \
#   bash benchmarks/ablate_batch.sh "r3win32 --linearize.window=32" "r3gate32 --linearize.gate_rank=32"
set -uo pipefail
source benchmarks/gpu_env.sh
for row in "$@"; do
  set -- $row
  name=$1
  bash benchmarks/ablate.sh "$@" > $OUT/abl_$name.txt 2>&1
  tail -n 3 $OUT/abl_$name.txt
  (cd $OUT && tar cf abl-$name.tar --ignore-failed-read abl_$name.txt *_abl-$name.log *_abl-$name.jsonl \
      report_abl-$name.md report_abl-$name.json cache-abl-$name 2>/dev/null
   find . -mindepth 1 -not -name '*.tar' -not -name 'prof_*' -delete)
done
ls -la $OUT
