"""One training micro-step (forward + backward) captured in a CUDA graph and replayed.

SmolLM2-sized steps are host-bound: a stage-1 step launches thousands of small kernels, and Python,
autograd and torch.compile's wrappers take longer to issue them than the GPU takes to run them
(session 8 profile: 137 ms of GPU work in a 344 ms step). Replaying a captured graph issues the whole
step at once.

    step = GraphedStep(loss_fn, model, autocast, grad_scale=1 / grad_accum)
    loss, extras = step(batch)      # batch: {name: tensor [B, L]} of the captured shapes; the
                                    # outputs are copies, valid after the next call too

The first call (per batch shape) warms up on a side stream (torch.compile and Triton compile
there), then captures ``loss_fn(model, batch)`` and ``(loss * grad_scale).backward()``. Gradients
accumulate into the parameters' existing ``.grad`` tensors, which therefore must stay allocated:
zero them in place (``optimizer.zero_grad(set_to_none=False)``), never set them to None.

Applies on one CUDA device without a loss scaler (bf16 or fp32; no DDP / FSDP: their
communication hooks are not captured here) to inputs without padding (an all-ones attention
mask is dropped before capture; a padded batch runs eagerly: HF's mask code syncs the host).
If capture fails the step falls back to eager, once, with a warning.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch


def enabled_for(device: torch.device, world: int, mixed_precision: str, distributed: str = "NO") -> bool:
    """Whether a training run may capture its steps (LINEARIZE_CUDA_GRAPH=0 turns it off)."""
    return (os.environ.get("LINEARIZE_CUDA_GRAPH", "1") != "0" and device.type == "cuda" and world == 1
            and mixed_precision in ("no", "bf16") and distributed == "NO")


class GraphedStep:
    def __init__(self, loss_fn: Callable, model: torch.nn.Module, autocast: Callable = contextlib.nullcontext,
                 grad_scale: float = 1.0, warmup: int = 2):
        self.loss_fn, self.model, self.autocast = loss_fn, model, autocast
        self.grad_scale, self.warmup = grad_scale, warmup
        self.graph = None
        self.failed = False
        self.static: dict = {}
        self.out = None
        self.key = None
        self.grads: list = []

    def _params(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def _eager(self, batch):
        with self.autocast():
            loss, extras = self.loss_fn(self.model, batch)
        (loss * self.grad_scale).backward()
        return loss, extras

    @staticmethod
    def _unpadded(batch) -> dict | None:
        """The batch with an all-ones attention mask replaced by None; None if it has padding."""
        m = batch.get("attention_mask")
        if m is not None and not bool(m.all()):
            return None
        return {**batch, "attention_mask": None} if "attention_mask" in batch else dict(batch)

    def __call__(self, batch: dict):
        if self.failed:
            return self._eager(batch)
        plain = self._unpadded(batch)
        if plain is None:
            return self._eager(batch)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(plain.items()) if v is not None)
        # the graph writes into the gradient tensors it was captured with: if anyone replaced them
        # (zero_grad(set_to_none=True)), capture again rather than write into freed memory
        grads = [None if p.grad is None else p.grad.data_ptr() for p in self._params()]
        if self.graph is None or key != self.key or grads != self.grads:
            try:
                self._capture(plain, key)
            except Exception as e:  # anything the capture cannot take: run this step (and the rest) eagerly
                warnings.warn(f"CUDA graph capture of the training step failed ({type(e).__name__}: {e}); "
                              "training continues without it")
                self.failed, self.graph = True, None
                return self._eager(batch)
        for k, v in plain.items():
            if v is not None:
                self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        # the next replay overwrites the static outputs: hand out copies (a caller may keep the
        # losses of several micro-batches before reading them)
        loss, extras = self.out
        return loss.clone(), {k: (v.clone() if torch.is_tensor(v) else v) for k, v in extras.items()}

    def _capture(self, plain: dict, key) -> None:
        params = self._params()
        saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
        try:
            self._warm_up_and_capture(plain, key, params, saved)
        except Exception:
            torch.cuda.synchronize()
            for p, g in zip(params, saved):  # the gradients the caller had (earlier micro-batches)
                p.grad = g
            raise

    def _warm_up_and_capture(self, plain: dict, key, params, saved) -> None:
        self.static = {k: (None if v is None else v.clone()) for k, v in plain.items()}
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(self.warmup):
                self._eager(self.static)
        torch.cuda.current_stream().wait_stream(s)
        for p in params:  # the graph adds into these tensors; they must exist before capture
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()
        ptrs = [p.grad.data_ptr() for p in params]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._eager(self.static)
        torch.cuda.synchronize()
        if [p.grad.data_ptr() for p in params] != ptrs:
            # backward rebound a .grad instead of adding into it: replays would not accumulate
            raise RuntimeError("the captured backward does not accumulate into the existing gradients")
        # capture ran no kernels: the gradients still hold zeros; put back what the caller had
        for p, g in zip(params, saved):
            if g is not None:
                p.grad.copy_(g)
        self.graph, self.out, self.key = graph, out, key
        self.grads = [p.grad.data_ptr() for p in params]
