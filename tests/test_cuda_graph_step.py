"""linearize.cuda_graph_step on a machine without CUDA: where the training loop may capture its
steps, and the batch check before a capture. (Capture and replay themselves need a GPU:
benchmarks/gpu_check.py compares a graphed and an eager run there, exactly, in fp32.)"""
import pytest
import torch

from linearize.cuda_graph_step import GraphedStep, enabled_for


def test_enabled_only_for_one_cuda_process_without_a_scaler(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert enabled_for(cuda, 1, "bf16")
    assert enabled_for(cuda, 1, "no")
    assert not enabled_for(cpu, 1, "bf16")
    assert not enabled_for(cuda, 2, "bf16")           # DDP: its hooks are not captured
    assert not enabled_for(cuda, 1, "bf16", "FSDP")
    assert not enabled_for(cuda, 1, "fp16")           # the loss scaler steps on the host
    monkeypatch.setenv("LINEARIZE_CUDA_GRAPH", "0")
    assert not enabled_for(cuda, 1, "bf16")


def test_unpadded_drops_an_all_ones_mask_and_refuses_padding():
    ids = torch.arange(12).view(2, 6)
    plain = GraphedStep._unpadded({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert plain["attention_mask"] is None and plain["input_ids"] is ids
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    assert GraphedStep._unpadded({"input_ids": ids, "attention_mask": mask}) is None
    assert set(GraphedStep._unpadded({"input_ids": ids})) == {"input_ids"}


def test_failed_capture_falls_back_to_eager_steps(monkeypatch):
    """Whatever the capture raises, the step still runs (eagerly, with a warning) and later steps
    do not try again."""
    model = torch.nn.Linear(4, 1)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        return m(batch["x"]).pow(2).mean(), {}

    step = GraphedStep(loss_fn, model, grad_scale=0.5)

    def broken(plain, key, params, saved):
        for p in params:  # a warm-up that ran before the failure leaves gradients behind
            p.grad = torch.full_like(p, 7.0)
        raise RuntimeError("no capture here")

    monkeypatch.setattr(step, "_warm_up_and_capture", broken)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    x = torch.randn(3, 4)
    earlier = torch.randn_like(model.weight)  # an earlier micro-batch's gradient must survive
    model.weight.grad = earlier.clone()
    with pytest.warns(UserWarning, match="capture of the training step failed"):
        step({"x": x})
    assert step.failed and len(calls) == 1
    expect = torch.autograd.grad(0.5 * model(x).pow(2).mean(), model.weight)[0]
    torch.testing.assert_close(model.weight.grad, earlier + expect)
    assert model.bias.grad is not None
    step({"x": x})  # eager again, no second attempt
    assert len(calls) == 2
