"""Training data: documents -> tokens -> fixed-length packed blocks, with a fixed held-out split.

Sources (``DataConfig.path``):
  * a directory of ``<source>-NNN.jsonl.gz`` shards (the local corpus): sources are mixed by
    ``source_weights`` (default: by size on disk) rather than read shard after shard;
  * one local file: .json / .jsonl / .jsonl.gz / .txt / .parquet (read through ``datasets``);
  * a hub dataset name (``datasets.load_dataset``; needs a reachable hub or a local cache).

Records are plain text (``text_field``) or alpaca-style instructions (instruction / input /
output), rendered with the Alpaca prompt or the tokenizer's chat template.

Every document is assigned to training or held-out by a seeded hash of its text, so the split
does not move when the token budget or the mixing changes.

For GPU runs, ``tokenize_to_file`` writes the training tokens once into a flat ``uint16`` .npy
(and ``<stem>.val.npy``); ``load_token_file`` reads it back as blocks, memory-mapped::

    python -m linearize.data --model smollm2-135m --out tokens/smollm2-20m.npy --max-tokens 20000000
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from .recipes import DataConfig, resolve_path

LOCAL_EXTS = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".txt", ".parquet")
SHARD_RE = re.compile(r"^(?P<source>.+)-(?P<num>\d+)\.jsonl(\.gz)?$")
IGNORE_INDEX = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


class DataError(ValueError):
    """Data that cannot be trained on: empty, too short for one block, wrong columns."""


# ------------------------------------------------------------------ documents


@dataclass
class Document:
    """One training document: ``prompt`` (no loss when masked) followed by ``text``."""

    text: str
    prompt: str = ""
    source: str = ""


def render_alpaca(rec: dict) -> tuple[str, str]:
    """Stanford Alpaca template -> (prompt, response)."""
    inp = (rec.get("input") or "").strip()
    prompt = ALPACA_PROMPT.format(
        ctx=", paired with an input that provides further context" if inp else "",
        instruction=str(rec.get("instruction", "")).strip(),
        input_block=f"### Input:\n{inp}\n\n" if inp else "",
    )
    return prompt, str(rec.get("output", "")).strip()


def render_chat(rec: dict, tokenizer) -> tuple[str, str]:
    """The tokenizer's chat template -> (prompt up to the assistant turn, response)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.template=chat but the tokenizer has no chat template; use template: alpaca")
    user = str(rec.get("instruction", "")).strip()
    if (rec.get("input") or "").strip():
        user += "\n\n" + rec["input"].strip()
    msgs = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        msgs + [{"role": "assistant", "content": str(rec.get("output", "")).strip()}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that rewrites earlier turns: no prompt masking
        return "", full
    return prompt, full[len(prompt):]


def record_to_document(rec: dict, cfg: DataConfig, fmt: str, tokenizer=None) -> Document:
    if fmt == "instruction":
        prompt, resp = render_chat(rec, tokenizer) if cfg.template == "chat" else render_alpaca(rec)
        return Document(text=resp, prompt=prompt, source=str(rec.get("source", "")))
    return Document(text=str(rec.get(cfg.text_field) or ""), source=str(rec.get("source", "")))


def detect_format(columns: list[str], cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    if {"instruction", "output"} <= set(columns):
        return "instruction"
    if cfg.text_field in columns:
        return "text"
    raise DataError(
        f"{cfg.path}: cannot tell the record format from columns {columns}: expected "
        f"'{cfg.text_field}' (set data.text_field) or instruction/input/output"
    )


def is_heldout(text: str, fraction: float, seed: int) -> bool:
    """Fixed, seeded document-level split: a keyed hash of the text, not its position."""
    if fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode("utf-8", "ignore"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def _looks_local(path: str) -> bool:
    """A path, not a hub name ("org/name" has one slash and no data-file extension)."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.endswith(LOCAL_EXTS) or path.count("/") > 1


def shard_sources(folder: str) -> dict[str, list[str]]:
    """``{source: [shard paths]}`` of a corpus directory (``<source>-NNN.jsonl.gz``)."""
    out: dict[str, list[str]] = {}
    for fn in sorted(os.listdir(folder)):
        m = SHARD_RE.match(fn)
        if m:
            out.setdefault(m["source"], []).append(os.path.join(folder, fn))
    return out


def _read_jsonl(fn: str) -> Iterator[dict]:
    opener = gzip.open if fn.endswith(".gz") else open
    with opener(fn, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_corpus(cfg: DataConfig, folder: str, tokenizer=None) -> Iterator[Document]:
    """Documents of a shard directory, sources interleaved by weight.

    Mixing is by characters taken so far: the next document comes from the source furthest
    below its share (deterministic, smooth). Shards of a source are read in a seeded random
    order, lazily, so a small budget reads little. An exhausted source drops out.
    """
    sources = shard_sources(folder)
    if not sources:
        raise FileNotFoundError(f"{folder} has no <source>-NNN.jsonl[.gz] shards")
    weights = dict(cfg.source_weights)
    unknown = set(weights) - set(sources)
    if unknown:
        raise DataError(f"data.source_weights names {sorted(unknown)}, not in {folder} (sources: {sorted(sources)})")
    if not weights:  # by size on disk
        weights = {s: float(sum(os.path.getsize(f) for f in fs)) for s, fs in sources.items()}
    rng = np.random.default_rng(cfg.seed)
    streams = {}
    for s in sorted(sources):
        if weights.get(s, 0) > 0:
            order = rng.permutation(len(sources[s]))
            streams[s] = (rec for i in order for rec in _read_jsonl(sources[s][i]))
    if not streams:
        raise DataError(f"data.source_weights gives every source of {folder} weight 0")
    taken = {s: 0 for s in streams}
    while streams:
        s = min(streams, key=lambda k: (taken[k] / weights[k], k))
        rec = next(streams[s], None)
        if rec is None:
            del streams[s]
            continue
        doc = record_to_document(rec, cfg, detect_format(list(rec), cfg), tokenizer)
        doc.source = doc.source or s
        taken[s] += len(doc.prompt) + len(doc.text) + 1
        yield doc


def load_records(cfg: DataConfig):
    """A ``datasets.Dataset`` from one local file or a hub name (raises naming a missing file)."""
    import datasets

    path = resolve_path(cfg.path)
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise DataError(f"dataset {cfg.path} is empty (0 bytes)")
        if path.endswith(".parquet"):
            kind, kw = "parquet", {}
        elif path.endswith(".txt"):
            kind, kw = "text", {"sample_by": "paragraph"}
        elif path.endswith((".json", ".jsonl", ".jsonl.gz", ".json.gz")):
            kind, kw = "json", {}
        else:
            raise DataError(f"{path}: unsupported data file type; use one of {', '.join(LOCAL_EXTS)}")
        return datasets.load_dataset(kind, data_files=path, split="train", **kw)
    if _looks_local(cfg.path) or os.path.isdir(path):
        raise FileNotFoundError(f"data file not found: {cfg.path} (resolved to {os.path.abspath(path)})")
    try:
        return datasets.load_dataset(cfg.path, split=cfg.split)
    except Exception as e:  # noqa: BLE001  (offline hub, bad name: say both possibilities)
        raise FileNotFoundError(
            f"data {cfg.path!r} is neither a local file nor a loadable hub dataset ({type(e).__name__}: {e})"
        ) from e


def iter_documents(cfg: DataConfig, tokenizer=None) -> Iterator[Document]:
    """All documents of ``cfg.path`` in a seeded order (mixed by source for a shard directory)."""
    path = resolve_path(cfg.path)
    if path is not None and os.path.isdir(path) and shard_sources(path):
        yield from iter_corpus(cfg, path, tokenizer)
        return
    if path is not None and os.path.isdir(path):
        raise FileNotFoundError(f"{path} is a directory without <source>-NNN.jsonl.gz shards")
    ds = load_records(cfg)
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.path} is empty")
    fmt = detect_format(ds.column_names, cfg)
    ds = ds.shuffle(seed=cfg.seed)
    for rec in ds:
        yield record_to_document(rec, cfg, fmt, tokenizer)


# ------------------------------------------------------------------ tokenise + pack


def _clip(doc: Document, max_chars: int, rng: np.random.Generator) -> Document:
    """A book contributes one random window (~max_doc_tokens) instead of all of itself."""
    if max_chars <= 0 or len(doc.text) <= max_chars or doc.prompt:
        return doc
    start = int(rng.integers(0, len(doc.text) - max_chars))
    return Document(text=doc.text[start:start + max_chars], source=doc.source)


def tokenize_document(doc: Document, tokenizer, mask_prompt: bool) -> tuple[list[int], list[int]]:
    """-> (ids, labels) with EOS appended; prompt labels are IGNORE_INDEX when masked."""
    eos = tokenizer.eos_token_id
    if doc.prompt:
        p = tokenizer(doc.prompt, add_special_tokens=True)["input_ids"]
        r = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        ids = p + r + ([eos] if eos is not None else [])
        labels = ([IGNORE_INDEX] * len(p) if mask_prompt else list(p)) + ids[len(p):]
        return ids, labels
    ids = tokenizer(doc.text, add_special_tokens=True)["input_ids"] + ([eos] if eos is not None else [])
    return ids, ids


@dataclass
class PackedTokens:
    """Token streams of both splits, flat: ``train_ids`` [T] (+ ``train_labels`` when masked)."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    train_labels: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    documents: int = 0


def tokenize_stream(
    cfg: DataConfig, tokenizer, max_tokens: Optional[int] = None, batch_docs: int = 64
) -> PackedTokens:
    """Tokenise documents until ``max_tokens`` training tokens (and ``val_tokens`` held out).

    Documents are tokenised in batches (the fast tokenizer's batch call is much faster).
    """
    max_tokens = max_tokens if max_tokens is not None else cfg.max_tokens
    rng = np.random.default_rng(cfg.seed + 1)
    max_chars = cfg.max_doc_tokens * 4 if cfg.max_doc_tokens else 0
    bufs = {"train": ([], []), "val": ([], [])}
    counts = {"train": 0, "val": 0}
    limits = {"train": max_tokens if max_tokens else float("inf"), "val": cfg.val_tokens if cfg.val_fraction > 0 else 0}
    keep_labels = cfg.mask_prompt
    n_docs = 0

    def full(split):
        return counts[split] >= limits[split]

    pending: list[tuple[str, Document]] = []

    def flush():
        texts = [d.text for _, d in pending if not d.prompt]
        enc = iter(tokenizer(texts, add_special_tokens=True)["input_ids"]) if texts else iter(())
        eos = tokenizer.eos_token_id
        for split, d in pending:
            # take this document's encoding first: `enc` must stay aligned with `pending`
            plain = None if d.prompt else next(enc)
            if full(split):
                continue
            if d.prompt:
                ids, labels = tokenize_document(d, tokenizer, cfg.mask_prompt)
            else:
                ids = plain + ([eos] if eos is not None else [])
                labels = ids
            bufs[split][0].append(np.asarray(ids, dtype=np.int64))
            if keep_labels:
                bufs[split][1].append(np.asarray(labels, dtype=np.int64))
            counts[split] += len(ids)
        pending.clear()

    for doc in iter_documents(cfg, tokenizer):
        if not doc.text and not doc.prompt:
            continue
        split = "val" if is_heldout(doc.prompt + doc.text, cfg.val_fraction, cfg.seed) else "train"
        if full(split):
            if full("train") and full("val"):
                break
            continue
        pending.append((split, _clip(doc, max_chars, rng)))
        n_docs += 1
        if len(pending) >= batch_docs:
            flush()
            if full("train") and full("val"):
                break
    flush()

    def cat(parts, limit):
        arr = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return arr[: int(limit)] if limit != float("inf") else arr

    return PackedTokens(
        train_ids=cat(bufs["train"][0], limits["train"]),
        val_ids=cat(bufs["val"][0], limits["val"]),
        train_labels=cat(bufs["train"][1], limits["train"]) if keep_labels else None,
        val_labels=cat(bufs["val"][1], limits["val"]) if keep_labels else None,
        documents=n_docs,
    )


class BlockDataset:
    """Fixed-length blocks of a flat token stream: ``ids`` [N, seq_len] (maybe a uint16 memmap).

    ``batch(indices)`` -> {"input_ids": LongTensor [B, L], "attention_mask": ones [B, L],
    "labels": LongTensor [B, L]} (labels = input_ids unless a prompt mask was kept; the model
    shifts them). Blocks pack across document boundaries; EOS separates documents.
    """

    def __init__(self, flat_ids: np.ndarray, seq_len: int, flat_labels: Optional[np.ndarray] = None):
        n = len(flat_ids) // seq_len
        self.seq_len = seq_len
        self.ids = flat_ids[: n * seq_len].reshape(n, seq_len)
        self.labels = None if flat_labels is None else flat_labels[: n * seq_len].reshape(n, seq_len)

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def batch(self, indices) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices)
        ids = torch.from_numpy(np.asarray(self.ids[idx], dtype=np.int64))
        labels = ids.clone() if self.labels is None else torch.from_numpy(np.asarray(self.labels[idx], dtype=np.int64))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def build_datasets(
    cfg: DataConfig, tokenizer, max_tokens: Optional[int] = None
) -> tuple[BlockDataset, BlockDataset]:
    """(train, held-out) block datasets from ``cfg.token_file`` or by tokenising ``cfg.path``."""
    if cfg.token_file:
        train = load_token_file(cfg.token_file, cfg.seq_len)
        vpath = val_path(resolve_path(cfg.token_file))
        val = load_token_file(vpath, cfg.seq_len, allow_empty=True) if os.path.isfile(vpath) else BlockDataset(
            np.zeros(0, dtype=np.uint16), cfg.seq_len
        )
    else:
        toks = tokenize_stream(cfg, tokenizer, max_tokens)
        train = BlockDataset(toks.train_ids, cfg.seq_len, toks.train_labels)
        val = BlockDataset(toks.val_ids, cfg.seq_len, toks.val_labels)
        if len(train) == 0:
            raise DataError(
                f"dataset {cfg.path} is empty: {toks.documents} documents gave {len(toks.train_ids)} training "
                f"tokens, fewer than one block of data.seq_len={cfg.seq_len}"
            )
    if len(train) == 0:
        raise DataError(f"token file {cfg.token_file} holds no complete block of {cfg.seq_len} tokens")
    return train, val


# ------------------------------------------------------------------ flat uint16 token files


def val_path(path: str) -> str:
    stem = path[:-4] if path.endswith(".npy") else path
    return stem + ".val.npy"


def tokenize_to_file(cfg: DataConfig, tokenizer, out_path: str, max_tokens: Optional[int] = None) -> dict:
    """Tokenise once into ``out_path`` (flat uint16 .npy) + ``<stem>.val.npy`` + ``<stem>.json``.

    Prompt masks are not kept (plain next-token data). Returns the metadata written.
    """
    vocab = len(tokenizer)
    if vocab > 2**16:
        raise DataError(f"vocabulary of {vocab} tokens does not fit uint16")
    toks = tokenize_stream(cfg, tokenizer, max_tokens)
    if len(toks.train_ids) == 0:
        raise DataError(f"dataset {cfg.path} is empty: no training tokens")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    for arr, p in ((toks.train_ids, out_path), (toks.val_ids, val_path(out_path))):
        tmp = p + ".tmp.npy"
        np.save(tmp, arr.astype(np.uint16))
        os.replace(tmp, p)
    meta = {
        "source": cfg.path,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab_size": vocab,
        "eos_token_id": tokenizer.eos_token_id,
        "train_tokens": int(len(toks.train_ids)),
        "val_tokens": int(len(toks.val_ids)),
        "documents": toks.documents,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "source_weights": dict(cfg.source_weights),
    }
    with open((out_path[:-4] if out_path.endswith(".npy") else out_path) + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_token_file(path: str, seq_len: int, allow_empty: bool = False) -> BlockDataset:
    """A flat uint16 .npy (memory-mapped) as a ``BlockDataset`` of ``seq_len`` blocks."""
    p = resolve_path(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"token file not found: {path}")
    arr = np.load(p, mmap_mode="r")
    if arr.ndim != 1:
        raise DataError(f"token file {path} must be a flat 1-D array, got shape {arr.shape}")
    ds = BlockDataset(arr, seq_len)
    if len(ds) == 0 and not allow_empty:
        raise DataError(f"token file {path} holds {len(arr)} tokens, fewer than one block of {seq_len}")
    return ds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Tokenise training text once into a flat uint16 .npy")
    ap.add_argument("--model", required=True, help="model whose tokenizer to use (name, dir, .gguf, alias)")
    ap.add_argument("--gguf-file", default=None)
    ap.add_argument("--data", default=DataConfig.path, help="corpus dir, data file or hub name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=float, default=20e6)
    ap.add_argument("--weights", default="", help="source=weight,... for a shard directory")
    ap.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    ap.add_argument("--val-tokens", type=float, default=DataConfig.val_tokens, help="held-out tokens kept at most")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from .loading import load_tokenizer, resolve_checkpoint

    tok = load_tokenizer(resolve_checkpoint(a.model, a.gguf_file))
    weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(",") if kv)}
    cfg = DataConfig(path=a.data, source_weights=weights, val_fraction=a.val_fraction,
                     val_tokens=int(a.val_tokens), seed=a.seed)
    meta = tokenize_to_file(cfg, tok, a.out, int(a.max_tokens))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
