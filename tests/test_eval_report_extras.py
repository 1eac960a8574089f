"""Report extras: ``task@k`` few-shot specs, the beyond-window share, fixed-context perplexity.

Fast: a tiny random Llama with SmolLM2's tokenizer (as in test_eval_harness.py) and small copies of
the local ARC / HellaSwag files.
"""
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import head_lines
import torch

from linearize.eval.block_perplexity import block_perplexity, load_ppl_tokens
from linearize.eval.datadir import resolve_data_dir
from linearize.eval.suite import SUITE, BadTaskSpec, UnknownTask, resolve_tasks, task_manager
from linearize.eval.window_share import RequestPositions, beyond_window_share, student_window

DATA = resolve_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no local data at {DATA}")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def tiny(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny, tok):
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory) -> Path:
    """40 ARC-Easy Train items, 4 Dev/Test items, 14 HellaSwag items."""
    root = tmp_path_factory.mktemp("data")
    for split, n in (("Train", 40), ("Dev", 4), ("Test", 4)):
        head_lines(DATA / f"arc/ARC-Easy-{split}.jsonl", root / f"arc/ARC-Easy-{split}.jsonl", n)
    head_lines(DATA / "hellaswag/hellaswag_val_full.txt", root / "hellaswag/hellaswag_val_full.txt", 14 * 6)
    return root


def _task(name, data_dir, k, seed=1234, limit=3):
    task = task_manager(data_dir).load([name])["tasks"][name]
    task.set_config(key="num_fewshot", value=k)
    task.set_fewshot_seed(seed)
    task.build_all_requests(limit=limit)
    return task


# ----------------------------------------------------------------------------- @k specs
def test_fewshot_spec_parsing():
    specs = resolve_tasks("piqa,arc_easy,arc_easy@25,hellaswag@10,mmlu")
    assert [s.name for s in specs] == ["piqa", "arc_easy", "arc_easy@25", "hellaswag@10", "mmlu"]
    assert [s.num_fewshot for s in specs] == [0, 0, 25, 10, 5]
    assert [s.zero_shot for s in specs] == [True, True, False, False, False]
    assert [s.fewshot_override for s in specs] == [None, None, 25, 10, None]  # mmlu keeps its YAML's 5
    assert all(s.local == SUITE[s.short].local for s in specs)
    assert resolve_tasks("arc_easy@0") == [SUITE["arc_easy"]]
    assert resolve_tasks("mmlu,mmlu@5") == [SUITE["mmlu"]]
    (m0,) = resolve_tasks(" local_mmlu@0 ")
    assert (m0.name, m0.num_fewshot, m0.fewshot_override, m0.zero_shot) == ("mmlu@0", 0, 0, False)
    for bad in ("arc_easy@x", "arc_easy@-1", "arc_easy@", "arc_easy@2.5", "arc_easy@ 3a", "wikitext@5"):
        with pytest.raises(BadTaskSpec):
            resolve_tasks(bad)
    with pytest.raises(UnknownTask, match="nope"):
        resolve_tasks("nope@5")


@needs_data
def test_arc_25shot_context_from_train(mini_data):
    from linearize.eval.loaders import load_arc

    train = {d["question"] for d in load_arc(mini_data)["train"]}
    task = _task("local_arc_easy", mini_data, 25)
    assert task.instances
    for inst in task.instances:
        ctx = inst.arguments[0]
        assert ctx.count("Question:") == 26  # 25 examples + the scored item
        *shots, scored = ctx.split("\n\n")
        assert scored == f"Question: {inst.doc['question']}\nAnswer:"
        qs = [s.split("\n")[0].removeprefix("Question: ") for s in shots]
        assert len(qs) == 25 and len(set(qs)) == 25 and set(qs) <= train
        assert inst.doc["question"] not in qs
        assert all(s.split("\nAnswer: ", 1)[1] for s in shots)  # each example carries its answer
    # the same examples as lm-eval's own arc_easy with the same seed
    from linearize.eval.official import official_task

    theirs = official_task("arc_easy", mini_data)
    theirs.set_config(key="num_fewshot", value=25)
    theirs.set_fewshot_seed(1234)
    theirs.build_all_requests(limit=3)
    assert [i.arguments for i in task.instances] == [i.arguments for i in theirs.instances]


@needs_data
def test_hellaswag_10shot_from_validation_without_scored_item(mini_data):
    task = _task("local_hellaswag", mini_data, 10, limit=14)
    seen_shots = set()
    for inst in task.instances:
        *shots, scored = inst.arguments[0].split("\n\n")
        assert len(shots) == 10 and scored == inst.doc["query"]
        assert not any(s.startswith(inst.doc["query"]) for s in shots), "the scored item is among its own shots"
        seen_shots.update(shots)
    assert len(seen_shots) > 10  # drawn from the other items, not one fixed list


# ----------------------------------------------------------------------------- beyond-window share
class WordLM:
    """lm-eval-like model: one token a word, BOS (0) added unless add_special_tokens=False."""

    prefix_token_id = 0

    def __init__(self, max_length):
        self.max_length = max_length
        self.vocab = {}
        self.calls = 0

    def tok_encode(self, s, add_special_tokens=None):
        self.calls += 1
        ids = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in s.split()]
        return ids if add_special_tokens is False else [0] + ids


def _sample(*requests):
    return {"arguments": [list(r) for r in requests]}


def test_beyond_window_share_known_counts():
    lm = WordLM(max_length=100)
    # [BOS a b c d e | f g h]: continuation at positions 6, 7, 8; trailing blank moved as HFLM does
    s = beyond_window_share([_sample(("a b c d e", " f g h"), ("a b c d e ", "f g h"))], lm, window=7)
    assert (s["scored_tokens"], s["beyond_tokens"], s["share"]) == (6, 4, 4 / 6)
    assert beyond_window_share([_sample(("a b c d e", " f g h"))], lm, window=6)["beyond_tokens"] == 3
    assert beyond_window_share([_sample(("a b c d e", " f g h"))], lm, window=9)["beyond_tokens"] == 0
    # empty context: the prefix token stands in -> positions 1, 2, 3
    assert beyond_window_share([_sample(("", "x y z"))], lm, window=3)["beyond_tokens"] == 1
    # left truncation to max_length + 1 = 7 tokens: 9 -> drop 2, continuation at positions 4, 5, 6
    short = WordLM(max_length=6)
    s = beyond_window_share([_sample(("a b c d e", " f g h"))], short, window=5)
    assert (s["scored_tokens"], s["beyond_tokens"]) == (3, 2)
    # rolling (perplexity): BOS + 10 words = 11 tokens, max_length 4 -> windows scoring
    # positions 1-4, 1-4, 2-4 (lm_eval.utils.get_rolling_token_windows); >= 3: 2 + 2 + 2
    s = beyond_window_share([{"arguments": [["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"]]}], WordLM(max_length=4), window=3)
    assert (s["scored_tokens"], s["beyond_tokens"]) == (11, 6)
    # newer lm-eval logs arguments as dicts
    s = beyond_window_share([{"arguments": {"gen_args_0": {"arg_0": "a b c d e", "arg_1": " f g h"}}}], lm, window=7)
    assert (s["scored_tokens"], s["beyond_tokens"]) == (3, 2)
    # each distinct string is tokenised once
    counting = WordLM(max_length=100)
    beyond_window_share([_sample(("q r s", " t"), ("q r s", " u"), ("q r s", " v"))] * 5, counting, window=2)
    assert counting.calls == 4  # the context once + 3 (context + continuation) strings


def test_beyond_window_positions_match_hflm(tiny_dir):
    """RequestPositions splits requests exactly as lm-eval's HFLM._encode_pair does."""
    from linearize.eval import LinearizedLM

    lm = LinearizedLM(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=1)
    pos = RequestPositions(lm)
    pairs = [("Question: How do I open a jar?\nAnswer:", " Twist the lid."), ("1, 2, 3, ", "4"),
             ("The capital of France is", " Paris")]
    for ctx, cont in pairs:
        c, k = lm._encode_pair(ctx, cont)
        assert pos.pair(ctx, cont) == (len(c), len(k))
    assert lm.max_length == 1024 and pos.max_length == 1024


def test_student_window_from_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "linearize": {"window": 48}}))
    assert student_window(str(tmp_path))[0] == 48
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    assert student_window(str(tmp_path)) == (64, "default")


# ----------------------------------------------------------------------------- fixed-context perplexity
TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "A second sentence follows, with numbers 1 2 3. ") * 4


def _manual_ppl(model, blocks):
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            logp = model(torch.tensor([b])).logits[0].double().log_softmax(-1)
            nll -= sum(logp[i - 1, b[i]].item() for i in range(1, len(b)))
            n += len(b) - 1
    return math.exp(nll / n), n


def test_block_perplexity_matches_manual_nll(tiny, tok, tmp_path):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    ctx, bos = 16, tok.bos_token_id
    assert bos is not None and len(ids) >= 3 * (ctx - 1)
    n_blocks = len(ids) // (ctx - 1)
    blocks = [[bos] + ids[i * (ctx - 1) : (i + 1) * (ctx - 1)] for i in range(n_blocks)]
    ref, n = _manual_ppl(tiny, blocks)
    got = block_perplexity(tiny, tok, TEXT, ctx, batch_size=1)
    assert (got["blocks"], got["tokens"]) == (n_blocks, n)
    assert got["token_perplexity"] == pytest.approx(ref, rel=1e-5)
    assert block_perplexity(tiny, tok, TEXT, ctx, batch_size=3)["token_perplexity"] == pytest.approx(ref, rel=1e-5)
    # max_tokens: only the first blocks
    two = block_perplexity(tiny, tok, TEXT, ctx, max_tokens=2 * (ctx - 1) + 5)
    assert two["blocks"] == 2 and two["token_perplexity"] == pytest.approx(_manual_ppl(tiny, blocks[:2])[0], rel=1e-5)
    # no tokenizer (so no BOS): blocks of ctx ids, the first of each unscored
    plain = [ids[i * ctx : (i + 1) * ctx] for i in range(len(ids) // ctx)]
    assert block_perplexity(tiny, None, ids, ctx)["token_perplexity"] == pytest.approx(
        _manual_ppl(tiny, plain)[0], rel=1e-5)
    with pytest.raises(ValueError, match="do not fill one block"):
        block_perplexity(tiny, tok, "too short", ctx)


def test_block_perplexity_file_inputs(tiny, tok, tmp_path):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    npy = tmp_path / "heldout.npy"
    np.save(npy, np.asarray(ids, dtype=np.uint16))
    assert load_ppl_tokens(npy, tok) == ids and load_ppl_tokens(npy, None, max_tokens=7) == ids[:7]
    ref = block_perplexity(tiny, tok, TEXT, 16)["token_perplexity"]
    assert block_perplexity(tiny, tok, npy, 16)["token_perplexity"] == pytest.approx(ref, rel=1e-6)
    assert block_perplexity(tiny, tok, np.load(npy), 16)["token_perplexity"] == pytest.approx(ref, rel=1e-6)
    txt = tmp_path / "heldout.txt"
    txt.write_text(TEXT, encoding="utf-8")
    assert load_ppl_tokens(txt, tok) == ids
    gz = tmp_path / "heldout.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "first doc"}) + "\n" + json.dumps({"text": "second doc"}) + "\n")
    assert load_ppl_tokens(gz, tok) == tok("first doc\n\nsecond doc", add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- end to end
@needs_data
def test_report_fewshot_window_and_block_ppl(tiny_dir, tok, tmp_path):
    """run_report on tiny models: copa and copa@3 in separate lm-eval calls, the few-shot mean, the
    beyond-window column (window read from the student's config) and the fixed-context table."""
    from linearize.eval import run_report

    student = tmp_path / "student"
    student.mkdir()
    for f in Path(tiny_dir).iterdir():
        (student / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((student / "config.json").read_text())
    cfg["linearize"] = {"window": 12}  # read by student_window only; the model stays a plain Llama
    (student / "config.json").write_text(json.dumps(cfg))
    npy = tmp_path / "heldout.npy"
    np.save(npy, np.asarray(tok(TEXT, add_special_tokens=False)["input_ids"], dtype=np.uint16))
    rep = run_report(tiny_dir, str(student), tasks="copa,copa@3", limit=2, out_dir=str(tmp_path / "out"),
                     device="cpu", dtype="float32", batch_size=2, ppl_contexts=[16, 32], ppl_max_tokens=200,
                     ppl_file=str(npy))
    rows = {(r["task"], r["metric"]): r for r in rep["rows"]}
    assert rows[("copa@3", "acc")]["num_fewshot"] == 3 and rows[("copa", "acc")]["num_fewshot"] == 0
    assert rep["mean_zero_shot"]["tasks"] == ["copa"] and rep["mean_few_shot"]["tasks"] == ["copa@3"]
    assert rep["config"]["window"] == 12 and "linearize.window" in rep["config"]["window_source"]
    bw = rep["beyond_window"]
    assert bw["copa"]["share"] < bw["copa@3"]["share"] == 1.0  # 3 examples push every answer past 12
    assert rows[("copa@3", "acc")]["beyond_window"] == 100.0
    bp = {r["task"]: r for r in rep["block_perplexity"]}
    assert set(bp) == {"wikitext ppl@16", "wikitext ppl@32", "heldout ppl@16", "heldout ppl@32"}
    for r in bp.values():
        assert r["teacher"] == pytest.approx(r["student"]) and r["ratio"] == pytest.approx(1.0)
        assert r["tokens"] > 0 and not r["higher_is_better"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Perplexity at fixed context" in md and "beyond_window %" in md and "| **copa@3** |" in md
    assert "**mean (few-shot)**" in md


def test_score_cache_reuses_and_splits(tmp_path):
    """Scores cached per checkpoint: a second run of the same task reads the file (a poisoned cached
    value shows up in the report), a new task is computed and added, and a changed checkpoint misses."""
    import json

    from linearize.eval.report import ScoreCache, token_fingerprint
    from linearize.eval.suite import resolve_tasks

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    c = ScoreCache(str(tmp_path / "cache"), str(ckpt), limit=3, seed=1, window=None, dtype="auto")
    out = {"tasks": {"copa": {"acc": 0.25}}, "beyond_window": {}, "block_ppl": {"wikitext ppl@8": {"token_perplexity": 9.0}}}
    fp = {"wikitext ppl@8": token_fingerprint([5, 6, 7])}
    c.save(out, fp)
    again = ScoreCache(str(tmp_path / "cache"), str(ckpt), limit=3, seed=1, window=None, dtype="auto")
    filled, todo = again.fill({"tasks": {}, "beyond_window": {}, "block_ppl": {}}, resolve_tasks("copa,piqa"), fp)
    assert filled["tasks"]["copa"] == {"acc": 0.25} and [s.name for s in todo] == ["piqa"]
    assert filled["block_ppl"]["wikitext ppl@8"]["token_perplexity"] == 9.0
    other_text = {"wikitext ppl@8": token_fingerprint([5, 6, 8])}  # same name, other tokens: recomputed
    assert not again.fill({"tasks": {}, "beyond_window": {}, "block_ppl": {}}, [], other_text)[0]["block_ppl"]
    other = ScoreCache(str(tmp_path / "cache"), str(ckpt), limit=4, seed=1, window=None, dtype="auto")
    assert other.path != again.path and other.fill({"tasks": {}, "beyond_window": {}, "block_ppl": {}},
                                                    resolve_tasks("copa"))[1]
    (ckpt / "config.json").write_text('{"changed": 1}')
    import os
    os.utime(ckpt / "config.json", ns=(1, 1))
    assert ScoreCache(str(tmp_path / "cache"), str(ckpt), limit=3, seed=1, window=None, dtype="auto").path != again.path
    assert json.loads(again.path.read_text())["tasks"]["copa"]["acc"] == 0.25


def test_markdown_without_tasks_has_no_empty_task_table(tmp_path):
    """A probes-only run (``--tasks ""``) writes the probe table, not an empty task table."""
    from linearize.eval.report import write_markdown
    report = {"teacher": "t", "student": "s", "config": {"limit": None, "data_dir": "d", "window": 64},
              "rows": [], "block_perplexity": [],
              "probes": {"teacher": {"mqar": {"1024": 0.9}}, "student": {"mqar": {"1024": 0.1}}}}
    write_markdown(report, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| task | metric |" not in text
    report["rows"] = [{"task": "piqa", "metric": "acc", "teacher": 0.6, "student": 0.5, "recovery": 83.3,
                       "primary": True, "beyond_window": 10.0}]
    write_markdown(report, tmp_path / "r.md")
    assert "| **piqa** | acc | 0.6000 | 0.5000 | 83.3 | 10.0 |" in (tmp_path / "r.md").read_text()


def test_cached_probes_come_back_with_int_lengths(tmp_path):
    """The teacher's probes read from the cache and the student's freshly run must share keys: JSON
    stores the lengths as strings, run_probes returns ints (a mix broke the markdown table)."""
    from linearize.eval.probes import ProbeConfig
    from linearize.eval.report import ScoreCache, write_markdown

    cfg = ProbeConfig(lengths=[1024, 4096], num_samples=2)
    fresh = {"mqar": {1024: 0.9, 4096: 0.6}, "passkey": {1024: 1.0, 4096: 1.0}}
    ScoreCache(str(tmp_path), "teacher", limit=None).save({"probes": fresh}, probes=cfg)
    cached = ScoreCache(str(tmp_path), "teacher", limit=None).probes_for(cfg)
    assert cached == fresh
    assert ScoreCache(str(tmp_path), "teacher", limit=None).probes_for(ProbeConfig(lengths=[1024])) is None
    student = {"mqar": {1024: 0.5, 4096: 0.1}, "passkey": {1024: 0.0, 4096: 0.0}}
    report = {"teacher": "t", "student": "s", "config": {"limit": None, "data_dir": "d", "window": 64},
              "rows": [], "block_perplexity": [], "probes": {"teacher": cached, "student": student}}
    write_markdown(report, tmp_path / "r.md")
    assert "| mqar | 4096 | 0.6000 | 0.1000 |" in (tmp_path / "r.md").read_text()
