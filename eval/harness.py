"""lm-eval model ``linearized``: lm-eval's HF wrapper for linearize checkpoints, GGUF files and aliases.

Registered in lm-eval's model registry when :mod:`linearize.eval` is imported. It is
:class:`lm_eval.models.huggingface.HFLM` with three additions:

* ``import linearize`` first, so ``AutoModelForCausalLM.from_pretrained(dir)`` rebuilds converted
  (Linearized*) checkpoints;
* ``pretrained`` may also be an alias (``smollm2-135m``), a ``.gguf`` file, or a directory with a
  ``gguf_file=`` model arg: these are loaded through :func:`linearize.loading.load_model`
  (de-quantised to ``dtype``, float32 by default);
* ``device`` defaults to ``cuda`` when available, else ``cpu`` (HFLM's default is ``cuda``);
* ``backend`` defaults to ``causal`` (converted configs are not in transformers' causal-LM table);
* loglikelihoods are scored a batch at a time on the device (:mod:`linearize.eval.scoring`) for the
  Llama, Mistral and Qwen2 families, converted or not: the same numbers as ``hf``, without its
  per-request host round trips. ``max_batch_tokens`` caps the padded tokens of one forward;
* the requests' strings are tokenised in batches before lm-eval's per-request loop asks for them.

Python::

    import linearize.eval, lm_eval
    lm_eval.simple_evaluate(model="linearized", model_args={"pretrained": "out/student"},
                           tasks=["local_piqa"], task_manager=linearize.eval.task_manager())

Command line (lm-eval's own ``lm_eval`` cannot import this module, so use the thin wrapper; it
registers the model, adds ``--include_path`` for the local tasks and forwards every argument)::

    python -m linearize.eval.harness --model linearized --model_args pretrained=out/student \\
        --tasks local_piqa,local_arc_easy --batch_size 8 --device cpu \\
        [--metadata '{"data_dir": "/path/to/data"}']
"""
from __future__ import annotations

import sys

import torch

import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours; see get_model)
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "linearized"


class LinearizedLM(HFLM):
    """HFLM that loads linearize checkpoints (converted dirs, plain HF dirs, GGUF files, aliases).

    Extra model args beyond HFLM's: ``gguf_file`` is honoured for any directory (HFLM's own
    handling is bypassed so the de-quantised model is an ordinary float model).
    """

    def __init__(self, pretrained="smollm2-135m", gguf_file: str | None = None, device: str | None = None,
                 dtype="auto", tokenizer=None, backend: str = "causal", **kwargs):
        import linearize  # noqa: F401  (registers the Linearized* auto classes)
        from linearize.loading import load_model, resolve_checkpoint

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(pretrained, str):
            ref = resolve_checkpoint(pretrained, gguf_file)
            if ref.gguf_file:
                load_dtype = None if dtype in (None, "auto") else dtype
                model, tok = load_model(ref.path, gguf_file=ref.gguf_file, dtype=load_dtype, device=device)
                pretrained, tokenizer = model, tokenizer or tok
            else:
                pretrained = ref.path
        super().__init__(pretrained=pretrained, device=device, dtype=dtype, tokenizer=tokenizer, backend=backend,
                         **kwargs)

    # Padded tokens per forward. Rolling windows (perplexity tasks) are max_length tokens each: a
    # batch sized for short multiple-choice requests would ask the teacher's padded SDPA for
    # batch x max_length^2 scores (64 x 8192^2 x 9 heads: 144 GiB on the H100).
    max_batch_tokens = 32768
    cuda_graphs = True  # replay the decoder from CUDA graphs when scoring on a GPU (eval/scoring.py)
    compile_glue = False  # torch.compile of the attention glue while scoring (scoring.score's docstring)

    # -- tokenisation: lm-eval encodes every request's context and context + continuation one string
    # at a time (3 min for MMLU 5-shot's 56K requests on the H100 machine's CPU); here the strings
    # its loop will ask for are encoded in batches first, and ``tok_encode`` serves them.
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._encodings = {}
        try:
            self.prime_encodings(_pair_strings(req.args for req in requests))
        except ImportError:  # an lm-eval without these helpers: encode one by one, as it does
            pass
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def prime_encodings(self, strings) -> None:
        """Encode ``[(text, add_special_tokens or None)]`` in batches, exactly as ``tok_encode`` would."""
        from array import array

        from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

        bos = self.tokenizer.decode(self.prefix_token_id)
        groups: dict[bool | None, list[tuple[str, bool | None]]] = {}
        for text, add in dict.fromkeys(strings):
            kw = _add_special_kwargs(add, self.add_bos_token)
            if add is None and has_bos_prefix(text, bos):
                kw["add_special_tokens"] = False
            groups.setdefault(kw.get("add_special_tokens"), []).append((text, add))
        cache = self.__dict__.setdefault("_encodings", {})
        for flag, items in groups.items():
            kw = {} if flag is None else {"add_special_tokens": flag}
            for i in range(0, len(items), 4096):
                chunk = items[i:i + 4096]
                ids = self.tokenizer([t for t, _ in chunk], **kw)["input_ids"]
                for key, enc in zip(chunk, ids):
                    cache[key] = array("i", enc)  # 4 bytes a token, not a Python int object each

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs):
        hit = self.__dict__.get("_encodings", {}).get((string, add_special_tokens))
        if hit is None or kwargs:
            return super().tok_encode(string, add_special_tokens=add_special_tokens,
                                      left_truncate_len=left_truncate_len, **kwargs)
        enc = hit.tolist()
        return enc[-left_truncate_len:] if left_truncate_len else enc

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """lm-eval's scoring, batched on the device (:mod:`linearize.eval.scoring`) where the model
        allows it; lm-eval's own loop otherwise (``batch_size=auto``, other architectures)."""
        from tqdm import tqdm

        from . import scoring

        if self.backend != "causal" or not isinstance(self.batch_size, int) or \
                not scoring.fast_path_supported(self.model):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        try:
            out = scoring.score(self.model, [(ctx, cont) for _, ctx, cont in requests], max_length=self.max_length,
                                max_rows=self.batch_size, max_tokens=self.max_batch_tokens, progress=bar.update,
                                cuda_graphs=self.cuda_graphs and self.device.type == "cuda",
                                compile_glue=self.compile_glue)
        finally:
            bar.close()
        for (request_str, _, _), answer in zip(requests, out):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return out

    def rolling_batch_size(self) -> int | str:
        """Rows per rolling batch for lm-eval's own loop, capped by ``max_batch_tokens``."""
        bs = self.batch_size_per_gpu
        if not isinstance(bs, int):
            return bs
        return max(1, min(bs, self.max_batch_tokens // max(1, int(self.max_length))))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        old = self.batch_size_per_gpu
        self.batch_size_per_gpu = self.rolling_batch_size()
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self.batch_size_per_gpu = old


def _pair_strings(pairs):
    """The (text, add_special_tokens) strings lm-eval's ``loglikelihood`` encodes for (context, continuation)
    pairs: ``_encode_pair`` (trailing spaces of the context moved to the continuation) or, for an
    empty context, the continuation alone without special tokens."""
    from .window_share import move_trailing_space

    for context, continuation in pairs:
        if context == "":
            yield continuation, False
            continue
        context, continuation = move_trailing_space(context, continuation)
        yield context + continuation, None
        yield context, None


if MODEL_NAME not in model_registry:
    register_model(MODEL_NAME)(LinearizedLM)


def main(argv: list[str] | None = None) -> None:
    """``lm_eval`` command line with the ``linearized`` model registered and the local tasks included."""
    from lm_eval.__main__ import cli_evaluate

    from .suite import TASKS_DIR

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
