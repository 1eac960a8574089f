"""Token perplexity at a fixed context length: non-overlapping blocks, one plain forward each.

    block_perplexity(model, tokenizer, text_or_ids, context=4096, max_tokens=1_000_000)

The text is tokenised once (no special tokens) and cut into consecutive, non-overlapping blocks.
Every forward is exactly ``context`` tokens long: ``[BOS] + context - 1`` text tokens when the
tokenizer has a BOS token, else ``context`` text tokens. Every token of a block except its first
(which has no prediction) is scored, so a block scores ``context - 1`` tokens, predicted from 1 to
``context - 1`` tokens of context. A last partial block is dropped, so every number is "at context
``context``"; the negative log-likelihoods are summed in float64 and the result is
``exp(sum NLL / scored tokens)``.

Sources (:func:`load_ppl_tokens`): a ``.npy`` file of token ids (e.g. a uint16 corpus slice: used
as is, no tokenisation), a ``.txt`` file, or ``.jsonl`` / ``.jsonl.gz`` documents (``{"text"}``,
joined with blank lines). WikiText-2 (:func:`wikitext_text`) is the local word-level tokenised
release, detokenised with lm-eval's own ``wikitext`` detokenizer.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

CHARS_PER_TOKEN_BOUND = 8  # text read for max_tokens tokens: generous (English BPE is ~4 chars a token)


def _as_ids(text_or_ids, tokenizer) -> list[int]:
    if isinstance(text_or_ids, os.PathLike):
        text_or_ids = load_ppl_tokens(text_or_ids, tokenizer)
    if isinstance(text_or_ids, str):
        return tokenizer(text_or_ids, add_special_tokens=False)["input_ids"]
    if isinstance(text_or_ids, torch.Tensor):
        return text_or_ids.reshape(-1).tolist()
    try:
        import numpy as np

        if isinstance(text_or_ids, np.ndarray):
            return text_or_ids.reshape(-1).astype("int64").tolist()
    except ImportError:  # pragma: no cover
        pass
    return [int(t) for t in text_or_ids]


@torch.no_grad()
def block_perplexity(model, tokenizer, text_or_ids, context: int, max_tokens: int | None = None,
                     batch_size: int = 1, device=None) -> dict:
    """Token perplexity of ``model`` on non-overlapping blocks of ``context`` tokens.

    text_or_ids: a string (tokenised here, no special tokens), token ids (list, numpy array,
    tensor: used as they are), or a ``pathlib.Path`` to a ``.npy`` / ``.txt`` / ``.jsonl(.gz)`` file.
    max_tokens: use at most this many text tokens (the first ones); None = all.
    Returns ``{"token_perplexity", "tokens" (scored), "blocks", "context", "nll"}``; raises
    ValueError when the text does not fill one block.
    """
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    ids = _as_ids(text_or_ids, tokenizer)
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    step = context - 1 if bos is not None else context  # text tokens per block
    n_blocks = len(ids) // step
    if n_blocks == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one block of {context} tokens")
    blocks = torch.tensor(ids[: n_blocks * step], dtype=torch.long).view(n_blocks, step)
    if bos is not None:
        blocks = torch.cat([torch.full((n_blocks, 1), int(bos), dtype=torch.long), blocks], dim=1)
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for i in range(0, n_blocks, max(1, int(batch_size))):
            x = blocks[i : i + batch_size].to(device)
            logits = model(input_ids=x, use_cache=False).logits
            for b in range(x.shape[0]):  # one row at a time: the float32 copy of the logits stays small
                nll = F.cross_entropy(logits[b, :-1].float(), x[b, 1:], reduction="none")
                total += nll.double().sum().item()
            del logits
    finally:
        model.train(was_training)
    scored = n_blocks * (context - 1)
    return {"token_perplexity": math.exp(total / scored), "tokens": scored, "blocks": n_blocks,
            "context": int(context), "nll": total}


def _read_text(path: Path, max_chars: int | None) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        docs, n = [], 0
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                text = json.loads(line)["text"]
                docs.append(text)
                n += len(text) + 2
                if max_chars is not None and n >= max_chars:
                    break
        return "\n\n".join(docs)
    with open(path, encoding="utf-8") as f:
        return f.read(max_chars) if max_chars is not None else f.read()


def load_ppl_tokens(path: str | os.PathLike, tokenizer, max_tokens: int | None = None) -> list[int]:
    """Token ids of a held-out slice: ``.npy`` ids as they are, else text tokenised without special tokens.

    ``.npy``: any integer array (uint16 for SmolLM2's vocabulary), flattened. ``.jsonl(.gz)``: one
    ``{"text": ...}`` document a line, joined with blank lines. Anything else is read as UTF-8 text.
    Only about as much text as ``max_tokens`` needs is read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        from .datadir import DataFileMissing

        raise DataFileMissing(f"perplexity file {path} not found")
    if path.suffix == ".npy":
        import numpy as np

        arr = np.load(path, mmap_mode="r").reshape(-1)
        if max_tokens is not None:
            arr = arr[: int(max_tokens)]
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: token ids must be integers, got {arr.dtype}")
        return np.asarray(arr).astype("int64").tolist()
    max_chars = None if max_tokens is None else CHARS_PER_TOKEN_BOUND * int(max_tokens)
    return _tokenize_head(tokenizer, _read_text(path, max_chars), max_tokens)


def _tokenize_head(tokenizer, text: str, max_tokens: int | None) -> list[int]:
    """The first ``max_tokens`` token ids of ``text`` (no special tokens), tokenising only about as
    much text as they need."""
    if max_tokens is None:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = text[: CHARS_PER_TOKEN_BOUND * int(max_tokens)]
    return tokenizer(text, add_special_tokens=False)["input_ids"][: int(max_tokens)]


def wikitext_text(data_dir=None, split: str = "test") -> str:
    """WikiText-2 ``test.txt`` (or ``valid.txt``) through lm-eval's ``wikitext`` detokenizer."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from .datadir import data_file

    name = {"test": "test.txt", "validation": "valid.txt", "valid": "valid.txt"}[split]
    return wikitext_detokenizer({"page": data_file(f"wikitext-2/{name}", data_dir).read_text(encoding="utf-8")})


def ppl_sources(tokenizer, data_dir=None, ppl_file: str | None = None, max_tokens: int | None = None,
                wikitext: bool = True) -> dict[str, list[int]]:
    """Token ids of each fixed-context perplexity source: ``wikitext`` and (with ``ppl_file``) ``heldout``."""
    out = {}
    if wikitext:
        out["wikitext"] = _tokenize_head(tokenizer, wikitext_text(data_dir), max_tokens)
    if ppl_file:
        out["heldout"] = load_ppl_tokens(ppl_file, tokenizer, max_tokens)
    return out
