"""Data: readers, templates, packing, held-out split, source mixing, uint16 token files, errors."""
import gzip
import json
import os

import numpy as np
import pytest

from linearize.data import (
    IGNORE_INDEX, DataError, build_datasets, is_heldout, iter_documents, load_token_file,
    render_alpaca, tokenize_stream, tokenize_to_file,
)
from linearize.recipes import DataConfig
from linearize.training import byte_tokenizer

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "corpus")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _words(rng, n):
    vocab = "the a cat dog sat on mat ran far away quick brown fox jumps over lazy river".split()
    return " ".join(rng.choice(vocab, n))


def _write_jsonl(path, recs, gz=False):
    op = gzip.open if gz else open
    with op(path, "wt", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_alpaca_template_and_prompt_mask(tmp_path, tok):
    rec = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    prompt, resp = render_alpaca(rec)
    assert "### Instruction:\nAdd the numbers." in prompt and "### Input:\n2 and 3" in prompt
    assert prompt.endswith("### Response:\n") and resp == "5"
    assert "### Input" not in render_alpaca({"instruction": "Hi", "output": "x"})[0]
    p = tmp_path / "alpaca.jsonl"
    _write_jsonl(p, [rec] * 50)
    toks = tokenize_stream(DataConfig(path=str(p), mask_prompt=True, val_fraction=0), tok)
    ids, labels = toks.train_ids, toks.train_labels
    n_prompt = len(tok(prompt)["input_ids"])
    assert (labels[:n_prompt] == IGNORE_INDEX).all()
    assert tok.decode(ids[n_prompt:n_prompt + 1]) == "5" and labels[n_prompt] == ids[n_prompt]
    assert ids[n_prompt + 1] == tok.eos_token_id


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "txt", "parquet"])
def test_local_files_pack_into_blocks(tmp_path, tok, kind):
    rng = np.random.default_rng(0)
    texts = [_words(rng, 40) for _ in range(30)]
    p = tmp_path / f"d.{kind}"
    if kind == "txt":
        p.write_text("\n\n".join(texts))
    elif kind == "parquet":
        import datasets
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(p))
    elif kind == "json":
        p.write_text(json.dumps([{"text": t} for t in texts]))
    else:
        _write_jsonl(p, [{"text": t} for t in texts], gz=kind.endswith("gz"))
    train, val = build_datasets(DataConfig(path=str(p), seq_len=32, val_fraction=0.2), tok)
    assert train.ids.shape[1] == 32 and len(train) > 10
    b = train.batch([0, 1])
    assert b["input_ids"].shape == (2, 32) and b["input_ids"].dtype.is_floating_point is False
    assert (b["attention_mask"] == 1).all() and (b["labels"] == b["input_ids"]).all()


def test_heldout_split_is_fixed_and_disjoint(tmp_path, tok):
    rng = np.random.default_rng(1)
    docs = [f"doc{i} " + _words(rng, 20) for i in range(200)]
    p = tmp_path / "d.jsonl"
    _write_jsonl(p, [{"text": t} for t in docs])
    cfg = DataConfig(path=str(p), val_fraction=0.1, val_tokens=10**9, seed=5)
    held = {d for d in docs if is_heldout(d, 0.1, 5)}
    assert 5 < len(held) < 40
    assert held == {d for d in docs if is_heldout(d, 0.1, 5)}  # fixed
    a = tokenize_stream(cfg, tok)
    b = tokenize_stream(cfg, tok)
    assert np.array_equal(a.val_ids, b.val_ids) and np.array_equal(a.train_ids, b.train_ids)
    val_text = tok.decode(a.val_ids)
    train_text = tok.decode(a.train_ids)
    for d in held:
        assert d in val_text and d not in train_text
    # the split of a document does not depend on the budget
    small = tokenize_stream(cfg, tok, max_tokens=500)
    assert all(tok.decode(small.train_ids).find(d) < 0 for d in held)


def test_source_mixing_by_weight(tmp_path, tok):
    rng = np.random.default_rng(2)
    for src in ("aaa", "bbb"):
        for shard in range(2):
            _write_jsonl(tmp_path / f"{src}-{shard:03d}.jsonl.gz",
                         [{"text": src.upper() + " " + _words(rng, 30), "source": src} for _ in range(100)], gz=True)
    cfg = DataConfig(path=str(tmp_path), source_weights={"aaa": 3, "bbb": 1}, val_fraction=0)
    docs = []
    for d in iter_documents(cfg, tok):
        docs.append(d.source)
        if len(docs) == 80:
            break
    share = docs.count("aaa") / len(docs)
    assert 0.7 <= share <= 0.8
    assert docs[:8].count("bbb") >= 1  # interleaved, not shard after shard
    with pytest.raises(DataError, match="ccc"):
        next(iter_documents(DataConfig(path=str(tmp_path), source_weights={"ccc": 1}), tok))


def test_token_file_round_trip(tmp_path, tok):
    p = tmp_path / "d.jsonl"
    rng = np.random.default_rng(3)
    _write_jsonl(p, [{"text": _words(rng, 30)} for _ in range(100)])
    cfg = DataConfig(path=str(p), seq_len=16, val_fraction=0.1)
    out = tmp_path / "tok" / "t.npy"
    meta = tokenize_to_file(cfg, tok, str(out), max_tokens=2000)
    arr = np.load(out)
    assert arr.dtype == np.uint16 and arr.ndim == 1 and len(arr) == meta["train_tokens"] == 2000
    assert os.path.isfile(tmp_path / "tok" / "t.val.npy") and os.path.isfile(tmp_path / "tok" / "t.json")
    ref = tokenize_stream(cfg, tok, max_tokens=2000)
    assert np.array_equal(arr, ref.train_ids)
    ds = load_token_file(str(out), 16)
    assert len(ds) == 2000 // 16 and ds.batch([0])["input_ids"].tolist()[0] == arr[:16].tolist()
    train, val = build_datasets(DataConfig(token_file=str(out), seq_len=16), tok)
    assert len(train) == len(ds) and len(val) > 0


def test_missing_file_is_named(tok):
    with pytest.raises(FileNotFoundError, match="nope/missing.jsonl"):
        build_datasets(DataConfig(path="./nope/missing.jsonl"), tok)
    with pytest.raises(FileNotFoundError, match="gone.npy"):
        build_datasets(DataConfig(token_file="/tmp/gone.npy"), tok)


def test_empty_dataset(tmp_path, tok):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises((DataError, ValueError), match="empty"):
        build_datasets(DataConfig(path=str(p)), tok)
    q = tmp_path / "short.jsonl"
    _write_jsonl(q, [{"text": "hi"}])
    with pytest.raises(DataError, match="empty.*fewer than one block"):
        build_datasets(DataConfig(path=str(q), seq_len=64, val_fraction=0), tok)


def test_wrong_columns(tmp_path, tok):
    p = tmp_path / "x.jsonl"
    _write_jsonl(p, [{"body": "x"}])
    with pytest.raises(DataError, match="text_field"):
        build_datasets(DataConfig(path=str(p)), tok)


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="shared corpus not present")
def test_real_corpus_mix(tok):
    cfg = DataConfig(path=CORPUS, seq_len=128, val_tokens=2048)
    train, val = build_datasets(cfg, tok, max_tokens=40_000)
    assert len(train) == 40_000 // 128 and len(val) > 0
    sources = []
    for d in iter_documents(cfg, tok):
        sources.append(d.source)
        if len(sources) == 200:
            break
    assert len(set(sources)) >= 5  # mixed, not the first shard's source only
