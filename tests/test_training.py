"""The two-stage pipeline on tiny-smoke (CPU): losses fall, only the intended parameters change,
a killed run resumes onto the uninterrupted curve, NaN stops with the step, CLI errors are clear."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from linearize.recipes import load_recipe
from linearize.training import (
    CHECKPOINT, NonFiniteLossError, cosine_with_warmup, load_converted, micro_batch_indices, stage_data, train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "recipes", "tiny-smoke.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/conftest.py


def smoke_cfg(tmp_path, text_path, *extra):
    return load_recipe(SMOKE, [f"--output_dir={tmp_path}", f"--data.path={text_path}", *extra])


def checksums(model):
    return {n: hashlib.sha1(p.detach().float().numpy().tobytes()).hexdigest() for n, p in model.named_parameters()}


def changed(before, after):
    return {n for n in before if before[n] != after.get(n)}


def test_data_order_is_a_pure_function():
    a = micro_batch_indices(100, 7, 4, seed=1)
    assert np.array_equal(a, micro_batch_indices(100, 7, 4, seed=1))
    r0 = micro_batch_indices(100, 3, 4, seed=1, rank=0, world=2)
    r1 = micro_batch_indices(100, 3, 4, seed=1, rank=1, world=2)
    assert not set(r0) & set(r1)
    epoch0 = np.concatenate([micro_batch_indices(100, m, 4, seed=1) for m in range(25)])
    assert sorted(epoch0) == list(range(100))  # one epoch visits each block once


def test_cosine_schedule():
    assert cosine_with_warmup(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_two_stages_on_tiny_smoke(tmp_path, text_path):
    from linearize import new_parameters
    from linearize.attention_transfer import ARTIFACT, distill
    from linearize.finetune import finetune

    cfg = smoke_cfg(tmp_path, text_path)
    model, tok = load_converted(cfg)
    train_ds, val_ds = stage_data(cfg, tok)
    new_names = {n for n, _ in new_parameters(model)}
    assert new_names

    before = checksums(model)
    r1 = distill(model, train_ds, cfg, val_data=val_ds, progress=False)
    after1 = checksums(model)
    losses = [h["loss"] for h in r1.history]
    assert len(losses) == cfg.distill.steps
    assert losses[0] / np.mean(losses[-10:]) >= 5, (losses[0], np.mean(losses[-10:]))
    assert changed(before, after1) == new_names  # stage 1: new parameters only, all of them
    assert all(p.requires_grad is False for n, p in model.named_parameters() if n not in new_names)
    rows = [json.loads(l) for l in open(tmp_path / "distill" / "metrics.jsonl")]
    assert {"layer_0", "layer_1", "loss", "lr", "tokens_per_s"} <= set(rows[0]) and "val_loss" in rows[-1]
    assert os.path.isfile(tmp_path / "distill" / "loss.png") and os.path.isfile(tmp_path / "distill" / ARTIFACT)

    peft_model, r2 = finetune(model, tok, train_ds, cfg, val_data=val_ds, progress=False)
    l2 = [h["loss"] for h in r2.history]
    assert np.mean(l2[-5:]) < np.mean(l2[:5]) - 0.1
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in n for n in saved)
    assert os.path.isfile(tmp_path / "merged" / "config.json") and os.path.isfile(tmp_path / "finetune" / "loss.png")

    # `linearize merge`: the same merged model from the small artifacts alone
    from safetensors.torch import load_file as load_st

    from linearize.train_cli import main as cli_main

    first = load_st(str(tmp_path / "merged" / "model.safetensors"))
    os.remove(tmp_path / "merged" / "model.safetensors")
    assert cli_main(["merge", SMOKE, f"--output_dir={tmp_path}", f"--data.path={text_path}"]) == 0
    again = load_st(str(tmp_path / "merged" / "model.safetensors"))
    assert first.keys() == again.keys() and max((first[k] - again[k]).abs().max().item() for k in first) < 1e-6
    assert cli_main(["merge", SMOKE, f"--output_dir={tmp_path / 'nothing'}", f"--data.path={text_path}"]) == 2


def test_stage2_changes_only_lora(tmp_path, text_path):
    from linearize.finetune import add_lora, make_finetune_loss

    cfg = smoke_cfg(tmp_path, text_path, "--finetune.steps=6", "--finetune.distill_weight=0.5")
    model, tok = load_converted(cfg)
    train_ds, _ = stage_data(cfg, tok)
    pm = add_lora(model, cfg.finetune)
    before = checksums(pm)
    r = train(pm, make_finetune_loss(pm, cfg.finetune), train_ds, cfg.finetune, str(tmp_path / "ft"), progress=False)
    assert "kd_loss" in r.history[0]
    diff = changed(before, checksums(pm))
    assert diff and all("lora_B" in n or "lora_A" in n for n in diff)


def test_kd_loss_matches_masked_reference():
    """Chunked, multiplicatively masked KD == boolean-indexed KL over the labelled positions
    (value and student gradient, fp32 ~1e-5), with a chunk that does not divide T - 1."""
    import torch.nn.functional as F

    from linearize.data import IGNORE_INDEX
    from linearize.finetune import kd_loss

    torch.manual_seed(0)
    B, T, V, temp = 3, 11, 17, 2.0
    s = torch.randn(B, T, V, requires_grad=True)
    t = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, :5] = IGNORE_INDEX
    labels[2, 7:] = IGNORE_INDEX
    mask = labels[:, 1:] != IGNORE_INDEX
    ls = F.log_softmax(s[:, :-1][mask] / temp, -1)
    lt = F.log_softmax(t[:, :-1][mask] / temp, -1)
    ref = F.kl_div(ls, lt, log_target=True, reduction="batchmean") * temp**2
    (g_ref,) = torch.autograd.grad(ref, s)
    got = kd_loss(s, t, labels, temp, chunk=4)
    (g,) = torch.autograd.grad(got, s)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    all_ignored = torch.full_like(labels, IGNORE_INDEX)
    assert kd_loss(s, t, all_ignored, temp).item() == 0.0


def _distill_setup(tmp_path, text_path, *extra):
    from linearize.attention_transfer import freeze_all_but_new, linear_attentions, make_transfer_loss
    from linearize.surgery import set_mode

    cfg = smoke_cfg(tmp_path, text_path, "--distill.steps=16", "--distill.ckpt_every=8",
                    "--distill.grad_accum=2", "--distill.batch_size=2", *extra)
    model, tok = load_converted(cfg)
    train_ds, val_ds = stage_data(cfg, tok)
    freeze_all_but_new(model)
    set_mode(model, "transfer")
    return cfg, model, train_ds, make_transfer_loss(linear_attentions(model))


def test_killed_run_resumes_onto_the_same_curve(tmp_path, text_path):
    cfg, model, ds, loss_fn = _distill_setup(tmp_path, text_path)
    full = train(model, loss_fn, ds, cfg.distill, str(tmp_path / "full"), seed=cfg.seed, progress=False, stage="distill")

    # a second run dies (an exception, no clean-up) in step 11, after the checkpoint at step 8
    cfg, model, ds, loss_fn = _distill_setup(tmp_path, text_path)
    calls = {"n": 0}

    def dying(m, b):
        calls["n"] += 1
        if calls["n"] > 2 * 10 + 1:
            raise KeyboardInterrupt("killed")
        return loss_fn(m, b)

    with pytest.raises(KeyboardInterrupt):
        train(model, dying, ds, cfg.distill, str(tmp_path / "killed"), seed=cfg.seed, progress=False, stage="distill")
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)["step"] == 8

    cfg, model, ds, loss_fn = _distill_setup(tmp_path, text_path)  # a fresh process, in effect
    res = train(model, loss_fn, ds, cfg.distill, str(tmp_path / "killed"), seed=cfg.seed, progress=False,
                stage="distill", resume=True)
    assert res.resumed_from == 8
    for a, b in zip(full.history[8:], res.history):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
    assert res.history[-1]["step"] == 16
    rows = [json.loads(l) for l in open(tmp_path / "killed" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 17))  # no duplicate steps after resuming


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, text_path):
    cfg, model, ds, loss_fn = _distill_setup(tmp_path, text_path, "--distill.ckpt_every=3", "--distill.grad_accum=1")
    calls = {"n": 0}

    def poisoned(m, b):
        calls["n"] += 1
        loss, extra = loss_fn(m, b)
        return (loss * float("nan") if calls["n"] == 5 else loss), extra

    with pytest.raises(NonFiniteLossError, match="at step 5") as e:
        train(model, poisoned, ds, cfg.distill, str(tmp_path / "nan"), progress=False, stage="distill")
    assert e.value.step == 5 and e.value.checkpoint.endswith(CHECKPOINT)
    ck = torch.load(e.value.checkpoint, weights_only=False)
    assert ck["step"] == 3 and all(torch.isfinite(t).all() for t in ck["params"].values())


def test_cli_errors(tmp_path, capsys):
    from linearize.train_cli import main

    assert main(["distill", SMOKE, "--distil.lr=1e-3"]) == 2
    assert "did you mean 'distill'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="file.jsonl"):
        main(["distill", SMOKE, f"--output_dir={tmp_path}", "--data.path=./no/such/file.jsonl", "--distill.steps=1"])


def test_bench_train_json(tmp_path):
    from linearize.bench_train import main

    res = main(["--model", "tiny-random-llama", "--batch", "1", "--seq", "32", "--iters", "1", "--warmup", "0",
                "--json", str(tmp_path / "b.json")])
    saved = json.load(open(tmp_path / "b.json"))
    assert saved["distill"]["ratio_to_teacher"] > 0 and saved["finetune"]["tokens_per_s"] > 0
    assert res["teacher"]["tokens_per_s"] > 0


def test_stage2_resume_matches(tmp_path, text_path):
    """LoRA's random init differs per process; the checkpoint carries it, so the curves agree."""
    from linearize.finetune import add_lora, make_finetune_loss

    def setup(init_seed=0):
        cfg = smoke_cfg(tmp_path, text_path, "--finetune.steps=8", "--finetune.ckpt_every=4")
        model, tok = load_converted(cfg)
        ds, _ = stage_data(cfg, tok)
        torch.manual_seed(init_seed)
        pm = add_lora(model, cfg.finetune)
        return cfg, pm, ds, make_finetune_loss(pm, cfg.finetune)

    cfg, pm, ds, lf = setup()
    full = train(pm, lf, ds, cfg.finetune, str(tmp_path / "a"), progress=False, stage="finetune")
    cfg, pm, ds, lf = setup()
    train(pm, lf, ds, cfg.finetune, str(tmp_path / "b"), progress=False, stage="finetune", max_steps=4)
    cfg, pm, ds, lf = setup(init_seed=99)  # the resumed process initialises LoRA differently
    res = train(pm, lf, ds, cfg.finetune, str(tmp_path / "b"), progress=False, stage="finetune", resume=True)
    assert [round(h["loss"], 6) for h in full.history[4:]] == [round(h["loss"], 6) for h in res.history]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(full.history[4:], res.history)) <= 1e-6
