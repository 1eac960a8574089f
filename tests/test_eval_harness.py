"""The `linearized` lm-eval model, recall probes and the teacher/student report, on tiny models.

A tiny random LlamaForCausalLM with SmolLM2's tokenizer is saved to a temp dir once per module.
The real-model PIQA test is marked slow.
"""
import json
import math

import pytest
import torch

import linearize
from linearize.eval import (LinearizedLM, ProbeConfig, TokenizerMismatch, check_same_tokenizer, run_probes,
                            run_report)
from linearize.eval.cli import add_eval_parser
from linearize.eval.datadir import resolve_data_dir
from linearize.loading import load_tokenizer, resolve_checkpoint

REQUESTS = [
    ("Question: How do I open a jar?\nAnswer:", " Twist the lid."),
    ("The capital of France is", " Paris"),
    ("1, 2, 3,", " 4"),
    ("A much longer context that goes on and on about many things, " * 3, " and ends here."),
    ("Short", " continuation with several tokens in it"),
]


def _tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tiny_llama")
    _tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def _lls(lm, pairs=REQUESTS):
    return [ll for ll, _ in lm.loglikelihood(_instances(pairs))]


def _results(lm, pairs=REQUESTS):
    return lm.loglikelihood(_instances(pairs))


# multiple choice with one-token continuations: the three share one model input
CHOICES = [("Pick a letter:", " A"), ("Pick a letter:", " B"), ("Pick a letter:", " C")]


def test_registered_model_matches_plain_hf(tiny_dir):
    """Batched device scoring (eval/scoring.py) against lm-eval's own per-request loop: same
    loglikelihoods and greedy flags, whatever the batch size; shared inputs run once."""
    from lm_eval.api.registry import get_model

    assert get_model("linearized") is LinearizedLM
    hf = get_model("hf")(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=1)
    ours = get_model("linearized").create_from_arg_string(f"pretrained={tiny_dir},dtype=float32", {"batch_size": 3})
    assert str(ours.device) == "cpu"
    pairs = REQUESTS + CHOICES
    ref, got = _results(hf, pairs), _results(ours, pairs)  # batch 1 vs batch 3: padding must not change the scores
    assert max(abs(a[0] - b[0]) for a, b in zip(ref, got)) < 1e-4, (ref, got)
    assert [g for _, g in ref] == [g for _, g in got]
    # a continuation the model does decode greedily: the flag must come out True
    ctx, cont = REQUESTS[1]
    c_ids, _ = ours._encode_pair(ctx, cont)
    with torch.no_grad():
        nxt = ours.model(torch.tensor([c_ids])).logits[0, -1].argmax().item()
    greedy_pair = (ctx, ours.tokenizer.decode([nxt]))
    [(_, g_ref)], [(_, g_got)] = _results(hf, [greedy_pair]), _results(ours, [greedy_pair])
    assert ours._encode_pair(*greedy_pair)[1] == [nxt]  # the decoded text re-encodes to the same token
    assert g_ref and g_got


def test_scoring_batches_and_shared_rows():
    from linearize.eval.scoring import build_rows, plan_batches

    rows = build_rows([([1, 2, 3], [4]), ([1, 2, 3], [5]), ([9], [8, 7]), ([1, 2], [3, 4])], max_length=16)
    assert [r.tokens for r in rows] == [[1, 2, 3], [9, 8]]  # longest first; three requests share [1, 2, 3]
    # (request, position whose output predicts the first target, targets)
    assert rows[0].targets == [(0, 2, [4]), (1, 2, [5]), (3, 1, [3, 4])] and rows[1].targets == [(2, 0, [8, 7])]
    # truncation from the left exactly as lm-eval does: (ctx + cont)[-(max_length + 1):][:-1]
    [r] = build_rows([(list(range(10)), [10, 11])], max_length=5)
    assert r.tokens == [6, 7, 8, 9, 10] and r.targets == [(0, 3, [10, 11])]
    lengths = [100, 90, 50, 50, 10, 10, 10, 3]
    batches = plan_batches(lengths, max_rows=3, max_tokens=200)
    assert [list(b) for b in batches] == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert plan_batches([500], max_rows=4, max_tokens=100) == [range(0, 1)]  # one row even above the cap
    with pytest.raises(ValueError, match="empty context"):
        build_rows([([], [1])], max_length=8)


@pytest.mark.parametrize("method", [None, "lizard", "hedgehog"])
def test_padded_shapes_score_the_same(tiny_dir, tok, method):
    """CUDA-graph shapes (widths rounded up to buckets, batches filled with padding rows) leave every
    score as it was: padding sits to the right of a causal model's real tokens."""
    from transformers import AutoModelForCausalLM

    from linearize.eval.scoring import bucket_width, score

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    if method:
        from linearize import LinearizeConfig, convert

        torch.manual_seed(1)
        model = convert(model, LinearizeConfig(method=method, window=8, chunk_size=16)).eval()
        for p in linearize.new_parameters(model):  # non-trivial feature maps and gates
            p[1].data.normal_(0, 0.3)
    pairs = [(tok(c)["input_ids"], tok(x)["input_ids"]) for c, x in REQUESTS + CHOICES]
    plain = score(model, pairs, max_length=1024, max_rows=3, max_tokens=10_000, pad_shapes=False)
    padded = score(model, pairs, max_length=1024, max_rows=3, max_tokens=10_000, pad_shapes=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(plain, padded)) < 1e-4, (plain, padded)
    assert [g for _, g in plain] == [g for _, g in padded]
    assert [bucket_width(t) for t in (1, 64, 65, 1024, 1025, 4097)] == [64, 64, 128, 1024, 1280, 5120]


def test_scoring_runs_the_glue_eagerly_unless_asked(tiny_dir, tok):
    """score() suspends the torch.compile of the attention glue (linearize.attention.fusion) for its
    forwards by default, lets it run with compile_glue=True, and restores it afterwards."""
    from transformers import AutoModelForCausalLM

    from linearize.attention import fusion
    from linearize.eval.scoring import score

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    seen = []
    model.get_decoder().register_forward_pre_hook(lambda mod, args: seen.append(fusion._enabled()))
    pairs = [(tok(c)["input_ids"], tok(x)["input_ids"]) for c, x in REQUESTS]
    score(model, pairs, max_length=1024, max_rows=3, max_tokens=10_000)
    assert seen and not any(seen)
    seen.clear()
    score(model, pairs, max_length=1024, max_rows=3, max_tokens=10_000, compile_glue=True)
    assert seen and all(seen) and fusion._enabled()


def test_rolling_batches_capped_by_tokens(tiny_dir):
    """Perplexity windows are max_length long: forwards stay within max_batch_tokens, scores do not
    change, and the short-request batch size is restored."""
    from lm_eval.api.instance import Instance

    lm = LinearizedLM(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=8, max_length=64)
    text = " ".join(f"word{i}" for i in range(300))
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    seen = []
    hook = lm.model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True)
    uncapped = lm.loglikelihood_rolling(reqs)
    assert max(s[0] for s in seen) == 8 and lm.batch_size_per_gpu == 8
    seen.clear()
    lm.max_batch_tokens = 128  # two windows of 64
    capped = lm.loglikelihood_rolling(reqs)
    hook.remove()
    assert max(s[0] * s[1] for s in seen) <= 128 and len(seen) > 1 and lm.batch_size_per_gpu == 8
    assert abs(capped[0] - uncapped[0]) < 1e-3


def test_converted_model_matches_direct_forward(tiny_dir, tok, tmp_path):
    """Only skipped while linearize.convert does not exist yet."""
    if not hasattr(linearize, "convert"):
        pytest.skip("linearize.convert is not there yet")
    from linearize import LinearizeConfig, convert
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    student = convert(model, LinearizeConfig(method="hedgehog")).eval()
    student.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = LinearizedLM(pretrained=str(tmp_path), device="cpu", dtype="float32", batch_size=2)
    got = _lls(lm)
    ref = []
    with torch.no_grad():
        for ctx, cont in REQUESTS:
            c, cont_ids = lm._encode_pair(ctx, cont)  # lm-eval's own context/continuation split
            whole = c + cont_ids
            logp = student(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            ref.append(sum(logp[i - 1, whole[i]].item() for i in range(len(c), len(whole))))
    assert max(abs(a - b) for a, b in zip(ref, got)) < 1e-4, (ref, got)


def test_probes_on_tiny_model(tiny_dir, tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    cfg = ProbeConfig(lengths=[64, 160], num_samples=2, num_queries=4, seed=3)
    a = run_probes(model, tok, cfg)
    assert set(a) == {"mqar", "passkey"} and all(set(v) == {64, 160} for v in a.values())
    assert all(0.0 <= x <= 1.0 for v in a.values() for x in v.values())
    assert run_probes(model, tok, cfg) == a  # deterministic
    with pytest.raises(ValueError, match="unknown probe"):
        ProbeConfig(probes=["nope"])


def test_tokenizer_mismatch_is_refused(tiny_dir, tok, tmp_path):
    other = load_tokenizer(resolve_checkpoint(tiny_dir))
    other.add_tokens(["<zz_new_token>"])
    with pytest.raises(TokenizerMismatch, match="vocabularies differ"):
        check_same_tokenizer(tok, other)
    _tiny_llama(len(other)).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    with pytest.raises(TokenizerMismatch):
        run_report(tiny_dir, str(tmp_path), tasks=["copa"], limit=2, out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before evaluating anything


@pytest.mark.skipif(not resolve_data_dir().is_dir(), reason="no local data")
def test_report_via_cli(tiny_dir, tmp_path):
    """`linearize eval` end to end on tiny models: 2 accuracy tasks, wikitext perplexity, probes."""
    import argparse

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "report"
    args = parser.parse_args(["eval", "--teacher", tiny_dir, "--student", tiny_dir, "--tasks", "copa,piqa,wikitext",
                              "--limit", "3", "--out", str(out), "--batch-size", "2", "--device", "cpu",
                              "--dtype", "float32", "--probes", "64", "--probe-samples", "1"])
    assert args.func(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 0 and "| task | metric |" in (out / "report.md").read_text()
    rows = {(r["task"], r["metric"]): r for r in rep["rows"]}
    rec = rows[("copa", "acc")]["recovery"]
    assert rec is None or abs(rec - 100) < 1e-6  # same model on both sides (None when teacher acc is 0)
    assert rows[("piqa", "acc_norm")]["teacher"] == rows[("piqa", "acc_norm")]["student"]
    wt = rows[("wikitext", "word_perplexity")]
    assert wt["teacher"] > 1 and abs(wt["recovery"] - 100) < 1e-6
    tp = rows[("wikitext", "token_perplexity")]["teacher"]
    assert 1 < tp < 2 * 49152  # a random model: about the vocabulary size
    assert rep["mean_zero_shot"]["tasks"] == ["piqa", "copa"] or set(rep["mean_zero_shot"]["tasks"]) == {"piqa", "copa"}
    assert set(rep["probes"]["student"]) == {"mqar", "passkey"}


@pytest.mark.slow
@pytest.mark.skipif(not resolve_data_dir().is_dir(), reason="no local data")
def test_piqa_on_smollm2(tmp_path):
    """Offline PIQA, 50 items, on the real SmolLM2-135M: a sane accuracy, identical when repeated."""
    import lm_eval

    from linearize.eval import task_manager

    try:
        lm = LinearizedLM(pretrained="smollm2-135m", device="cpu", batch_size=8)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    accs = []
    for _ in range(2):
        res = lm_eval.simple_evaluate(model=lm, tasks=["local_piqa"], limit=50, task_manager=task_manager(),
                                      bootstrap_iters=0, log_samples=False)
        accs.append(res["results"]["local_piqa"]["acc,none"])
    assert 0.5 <= accs[0] <= 0.8, accs
    assert accs[0] == accs[1]
    assert not math.isnan(res["results"]["local_piqa"]["acc_norm,none"])


def test_batched_tokenisation_matches_lm_eval(tiny_dir):
    """The strings primed in batches encode exactly as lm-eval's one-at-a-time tok_encode / _encode_pair."""
    from lm_eval.models.huggingface import HFLM

    ours = LinearizedLM(pretrained=tiny_dir, device="cpu", dtype="float32", batch_size=4)
    pairs = REQUESTS + CHOICES + [("Trailing spaces  ", "then words"), ("", " empty context"),
                                  ("<|im_start|>user already starts with a special token", " ok"), ("Ünïcödé テスト", " ✓")]
    plain = [HFLM._encode_pair(ours, c, x) if c else ours.tok_encode(x, add_special_tokens=False) for c, x in pairs]
    from linearize.eval.harness import _pair_strings

    ours._encodings = {}
    ours.prime_encodings(_pair_strings(pairs))
    assert len(ours._encodings) >= len(pairs)
    encode = ours.tokenizer.encode
    ours.tokenizer.encode = lambda *a, **k: pytest.fail("a primed string was encoded again")
    try:
        served = [ours._encode_pair(c, x) if c else ours.tok_encode(x, add_special_tokens=False) for c, x in pairs]
    finally:
        ours.tokenizer.encode = encode
    assert served == plain
