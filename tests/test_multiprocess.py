"""Both stages under several processes, checked against one process (issue 8).

CPU: ``torchrun --nproc_per_node 2`` runs real DDP over gloo (``linearize.training.make_accelerator``
asks Accelerate for the CPU, which is what makes it set up the process group). The recipe's global
batch is kept, so 1 and 2 processes train on the same sequences each step and their metrics must
agree to float summation order: TOL below. Resuming crosses process counts both ways.

GPU (skipped here): the same comparison under ``accelerate launch`` with the DDP and FSDP configs
of recipes/accelerate/, on a machine with 2+ GPUs.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from linearize.recipes import RecipeError, load_recipe, split_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "recipes", "tiny-smoke.yaml")
ACCEL = os.path.join(ROOT, "recipes", "accelerate")

# 6 distill + 4 finetune steps of tiny-smoke (global batch 4 = 2 processes x 2): a few seconds each
SHORT = ["--distill.steps=6", "--distill.eval_every=3", "--distill.ckpt_every=3",
         "--finetune.steps=4", "--finetune.eval_every=2", "--finetune.ckpt_every=2", "--finetune.save_merged=false"]
# 1 vs 2 processes, fp32 on CPU: only the order of float sums differs (the 2-process gradient is the
# mean of two half-batch means); observed differences are ~1e-7 relative after 6 steps
TOL = dict(rel=1e-5, abs=1e-7)
COMPARED = ("loss", "val_loss", "grad_norm", "lr", "tokens", "layer_0", "layer_1", "lm_loss")


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/conftest.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, command: str, out: str, text_path: str, *extra: str) -> str:
    """``python -m linearize.train_cli COMMAND tiny-smoke`` in 1 process or under torchrun."""
    args = ["-m", "linearize.train_cli", command, SMOKE, f"--output_dir={out}", f"--data.path={text_path}",
            *SHORT, *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{nproc} process(es) {command} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout + p.stderr


def metrics(out: str, stage: str) -> list[dict]:
    with open(os.path.join(out, stage, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_same_curve(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for k in COMPARED:
            assert (k in x) == (k in y), (k, x, y)
            if k in x:
                assert y[k] == pytest.approx(x[k], **TOL), (k, x["step"], x[k], y[k])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text_path):
    """The reference: both stages in one process (``run``)."""
    out = str(tmp_path_factory.mktemp("one"))
    launch(1, "run", out, text_path)
    return out


def test_global_batch_split():
    cfg = load_recipe(SMOKE)
    assert split_batch(cfg.distill, 1) == (4, 1) and split_batch(cfg.distill, 2) == (2, 1)
    assert split_batch(cfg.distill, 4) == (1, 1)
    llama = load_recipe(os.path.join(ROOT, "recipes", "llama3-8b-lizard.yaml"))  # batch 1 x accum 8
    assert [split_batch(llama.distill, n) for n in (1, 2, 4, 8)] == [(1, 8), (1, 4), (1, 2), (1, 1)]
    big = load_recipe(SMOKE, ["--distill.batch_size=8", "--distill.grad_accum=2"])  # global 16
    assert split_batch(big.distill, 2) == (8, 1) and split_batch(big.distill, 4) == (4, 1)
    with pytest.raises(RecipeError, match="does not split evenly over 3 processes"):
        split_batch(cfg.distill, 3)


def test_data_split_is_exact():
    """Each step's blocks are the same for 1, 2 and 4 processes, split without overlap or loss."""
    from linearize.training import micro_batch_indices

    cfg = load_recipe(SMOKE, ["--distill.batch_size=2", "--distill.grad_accum=4"])  # global 8
    for step in (0, 5, 12, 13, 40):  # 12-13 cross the first epoch boundary of 100 blocks
        ref = None
        for world in (1, 2, 4, 8):
            bs, ga = split_batch(cfg.distill, world)
            parts = [micro_batch_indices(100, step * ga + m, bs, 3, r, world, ga) for r in range(world) for m in range(ga)]
            got = np.concatenate(parts)
            assert len(got) == 8 and len(set(got)) == 8  # no overlap, nothing lost
            ref = sorted(got) if ref is None else ref
            assert sorted(got) == ref, (step, world)


def test_ddp_two_processes_match_one(tmp_path, text_path, one_process):
    """Stage 1 and stage 2 under 2-process DDP (gloo) give the 1-process loss curves."""
    out = str(tmp_path / "two")
    log = launch(2, "run", out, text_path)
    for stage in ("distill", "finetune"):
        one, two = metrics(one_process, stage), metrics(out, stage)
        assert {r["world_size"] for r in one} == {1} and {r["world_size"] for r in two} == {2}
        assert {(r["micro_batch"], r["grad_accum"]) for r in two} == {(2, 1)}  # global batch 4 kept
        assert_same_curve(one, two)
    # only the main process writes: one metrics line per step, one "[distill] ..." line
    assert [r["step"] for r in metrics(out, "distill")] == list(range(1, 7))
    assert log.count("[distill] 6 steps") == 1 and log.count("[finetune] 4 steps") == 1
    assert not [f for f in os.listdir(os.path.join(out, "distill")) if ".tmp" in f]
    a = torch.load(os.path.join(one_process, "distill", "linear_attention.pt"))
    b = torch.load(os.path.join(out, "distill", "linear_attention.pt"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def _resume_chain(tmp_path, text_path, one_process, first: int, second: int):
    """distill: ``first`` processes for 3 steps, ``second`` to the end; finetune: ``second`` for 2
    steps, ``first`` to the end. The joined curves are the uninterrupted 1-process ones."""
    out = str(tmp_path / f"resume{first}{second}")
    launch(first, "distill", out, text_path, "--max-steps=3")
    log = launch(second, "distill", out, text_path, "--resume")
    assert "resumed from" in log and "at step 3" in log
    launch(second, "finetune", out, text_path, "--max-steps=2")
    log = launch(first, "finetune", out, text_path, "--resume")
    assert "resumed from" in log and "at step 2" in log
    for stage, cut, (w1, w2) in (("distill", 3, (first, second)), ("finetune", 2, (second, first))):
        rows = metrics(out, stage)
        assert [r["world_size"] for r in rows] == [w1] * cut + [w2] * (len(rows) - cut)
        assert_same_curve(metrics(one_process, stage), rows)


def test_resume_two_then_one(tmp_path, text_path, one_process):
    """distill 2 -> 1 processes, finetune 1 -> 2."""
    _resume_chain(tmp_path, text_path, one_process, 2, 1)


@pytest.mark.slow
def test_resume_one_then_two(tmp_path, text_path, one_process):
    """The mirror: distill 1 -> 2, finetune 2 -> 1 (slow: four more process launches)."""
    _resume_chain(tmp_path, text_path, one_process, 1, 2)


# ------------------------------------------------------------------ FSDP, GPUs


def test_fsdp_on_cpu_is_not_possible():
    """Accelerate only turns a launch into FSDP for GPU-like process groups, never for MULTI_CPU
    (gloo): the FSDP comparison needs 2+ GPUs (see test_gpu_parallelism_matches_one_gpu)."""
    import inspect

    from accelerate.state import AcceleratorState

    src = inspect.getsource(AcceleratorState.__init__)
    block = src[src.index("DistributedType.MULTI_GPU,"):src.index("self.distributed_type = DistributedType.FSDP")]
    assert "MULTI_CPU" not in block
    pytest.skip("FSDP through Accelerate has no CPU (gloo) mode: Accelerate sets DistributedType.FSDP only for "
                "MULTI_GPU/NPU/XPU/... process groups; run test_gpu_parallelism_matches_one_gpu on 2+ GPUs")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2+ GPUs (accelerate launch with DDP / FSDP)")
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_gpu_parallelism_matches_one_gpu(tmp_path, text_path, config):
    """accelerate launch, 2 GPUs, DDP or FSDP vs one GPU: same curves within bf16 noise, and a
    checkpoint of 2 processes resumes under 1."""
    def accel(cfg_file, n, out, *extra):
        args = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(ACCEL, cfg_file),
                "--num_processes", str(n), "--main_process_port", str(_free_port()),
                "-m", "linearize.train_cli", "run", SMOKE, f"--output_dir={out}", f"--data.path={text_path}",
                "--distill.mixed_precision=bf16", "--finetune.mixed_precision=bf16", *SHORT, *extra]
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-5000:]
        return p.stdout + p.stderr

    one, two, res = (str(tmp_path / n) for n in ("one", "two", "resumed"))
    accel("one-gpu.yaml", 1, one)
    accel(config, 2, two)
    for stage in ("distill", "finetune"):
        a, b = metrics(one, stage), metrics(two, stage)
        assert {r["world_size"] for r in b} == {2}
        for x, y in zip(a, b):  # bf16 compute: reductions in another order move the 3rd digit
            assert y["loss"] == pytest.approx(x["loss"], rel=2e-2), (stage, x["step"])
    accel(config, 2, res, "--max-steps=3")
    accel(config, 1, res, "--resume")
    assert [r["world_size"] for r in metrics(res, "distill")] == [2, 2, 2, 1, 1, 1]


# ------------------------------------------------------------------ bad input: refused before any step


def test_more_processes_than_gpus_is_refused(monkeypatch):
    from linearize.training import check_devices, make_accelerator

    check_devices(8, 8)
    check_devices(16, 0)  # CPU: processes share cores, there is no device count to exceed
    with pytest.raises(RuntimeError, match="4 processes were launched on this node but only 2 GPU"):
        check_devices(4, 2)
    # the launch path: refused before any Accelerate state or process group exists
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="--num_processes 1 or fewer"):
        make_accelerator("no")


def _tiny_distill(tmp_path, text_path, *extra):
    from linearize.attention_transfer import freeze_all_but_new, linear_attentions, make_transfer_loss
    from linearize.surgery import set_mode
    from linearize.training import load_converted, recipe_identity, stage_data

    cfg = load_recipe(SMOKE, [f"--output_dir={tmp_path}", f"--data.path={text_path}", "--distill.steps=4",
                              "--distill.ckpt_every=2", *extra])
    model, tok = load_converted(cfg)
    ds, _ = stage_data(cfg, tok)
    freeze_all_but_new(model)
    set_mode(model, "transfer")
    return cfg, model, ds, make_transfer_loss(linear_attentions(model)), recipe_identity(cfg, "distill")


def _snapshot(run_dir):
    return {f: open(os.path.join(run_dir, f), "rb").read() for f in sorted(os.listdir(run_dir))
            if os.path.isfile(os.path.join(run_dir, f))}


def test_wrap_policy_matching_nothing_is_refused(tmp_path, text_path):
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from linearize.finetune import add_lora
    from linearize.training import check_wrap_policy, train

    cfg, model, ds, loss_fn, ident = _tiny_distill(tmp_path, text_path)
    check_wrap_policy(model, ["LlamaDecoderLayer"])
    check_wrap_policy(add_lora(load_recipe_model(cfg), cfg.finetune), ["LlamaDecoderLayer"])  # through PEFT
    with pytest.raises(ValueError, match=r"\['MistralDecoderLayer'\] that match no module.*LlamaDecoderLayer"):
        check_wrap_policy(model, ["MistralDecoderLayer"])

    run_dir = str(tmp_path / "distill")
    train(model, loss_fn, ds, cfg.distill, run_dir, progress=False, stage="distill", identity=ident, max_steps=2)
    before = _snapshot(run_dir)
    # an FSDP accelerator as Accelerate builds it from recipes/accelerate/fsdp.yaml with a wrong class
    # (a stand-in object: Accelerate has no FSDP on CPU); train() must refuse before writing
    fake = types.SimpleNamespace(
        num_processes=2, process_index=0, gradient_accumulation_steps=1,
        distributed_type=types.SimpleNamespace(name="FSDP"),
        state=types.SimpleNamespace(fsdp_plugin=types.SimpleNamespace(
            auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=["LlamaDecoderLayr"])),
    )
    with pytest.raises(ValueError, match="LlamaDecoderLayr.*match no module"):
        train(model, loss_fn, ds, cfg.distill, run_dir, progress=False, stage="distill", identity=ident,
              resume=True, accelerator=fake)
    assert _snapshot(run_dir) == before


def load_recipe_model(cfg):
    from linearize.training import load_converted

    return load_converted(cfg)[0]


def test_checkpoint_of_another_recipe_is_refused(tmp_path, text_path):
    from linearize.training import CheckpointMismatchError, train

    cfg, model, ds, loss_fn, ident = _tiny_distill(tmp_path, text_path)
    run_dir = str(tmp_path / "distill")
    train(model, loss_fn, ds, cfg.distill, run_dir, progress=False, stage="distill", identity=ident, max_steps=2)
    before = _snapshot(run_dir)
    for extra, key in ((["--distill.lr=1e-3"], "lr"), (["--distill.grad_accum=2"], "global_batch"),
                       (["--linearize.window=16"], "linearize.window"), (["--seed=1"], "seed")):
        cfg2, model2, ds2, loss2, ident2 = _tiny_distill(tmp_path, text_path, *extra)
        with pytest.raises(CheckpointMismatchError, match=rf"another recipe[\s\S]*{key}: checkpoint"):
            train(model2, loss2, ds2, cfg2.distill, run_dir, progress=False, stage="distill", identity=ident2,
                  resume=True)
        assert _snapshot(run_dir) == before  # checkpoint, metrics and plot untouched
    # the same global batch split otherwise (2 x 2 instead of 4 x 1) is the same recipe: it resumes
    cfg3, model3, ds3, loss3, ident3 = _tiny_distill(tmp_path, text_path, "--distill.batch_size=2",
                                                     "--distill.grad_accum=2")
    r = train(model3, loss3, ds3, cfg3.distill, run_dir, progress=False, stage="distill", identity=ident3, resume=True)
    assert r.resumed_from == 2 and r.steps == 4


def test_cli_resume_with_another_recipe_is_refused(tmp_path, text_path, capsys):
    """The CLI checks the saved recipe.yaml before loading the model; nothing in output_dir changes."""
    from linearize.recipes import save_recipe
    from linearize.train_cli import main

    out = tmp_path / "run"
    save_recipe(load_recipe(SMOKE, [f"--output_dir={out}", f"--data.path={text_path}"]), str(out / "recipe.yaml"))
    before = (out / "recipe.yaml").read_bytes()
    assert main(["distill", SMOKE, f"--output_dir={out}", f"--data.path={text_path}", "--distill.lr=1e-3",
                 "--resume"]) == 2
    assert "distill.lr: checkpoint 0.03, this run 0.001" in capsys.readouterr().err
    assert (out / "recipe.yaml").read_bytes() == before and os.listdir(out) == ["recipe.yaml"]


def test_accelerate_configs():
    """The three launch configs parse with Accelerate and say what recipes/accelerate/README.md says."""
    from accelerate.commands.config.config_args import load_config_from_file

    one = load_config_from_file(os.path.join(ACCEL, "one-gpu.yaml"))
    ddp = load_config_from_file(os.path.join(ACCEL, "ddp.yaml"))
    fsdp = load_config_from_file(os.path.join(ACCEL, "fsdp.yaml"))
    assert (one.distributed_type.name, one.num_processes) == ("NO", 1)
    assert ddp.distributed_type.name == "MULTI_GPU"
    assert fsdp.distributed_type.name == "FSDP" and fsdp.mixed_precision == "bf16"
    fc = fsdp.fsdp_config
    assert fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fc["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fc["fsdp_use_orig_params"] is True
    from linearize.training import check_wrap_policy, tiny_random_llama

    check_wrap_policy(tiny_random_llama()[0], [fc["fsdp_transformer_layer_cls_to_wrap"]])
    assert os.path.isfile(os.path.join(ACCEL, "README.md"))
