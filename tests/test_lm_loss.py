"""linearize.lm_loss: the chunked LM loss equals HF's (value and gradients), whatever the chunking,
with ignored labels, a trainable or frozen head; and stage 2's loss takes it where it applies.

fp32 on CPU: 1e-5 relative (the chunks reorder the sums of the loss and of dW)."""
import pytest
import torch

from linearize.data import IGNORE_INDEX
from linearize.lm_loss import chunk_rows, lm_loss, softmax_grad_rows


def hf_loss(h, w, labels):
    """HF's ForCausalLMLoss on full logits."""
    logits = h @ w.t()
    labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, w.shape[0]), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("rows", [1, 5, 64, None])
@pytest.mark.parametrize("w_grad", [True, False])
def test_lm_loss_matches_hf(rows, w_grad):
    gen = torch.Generator().manual_seed(rows or 0)
    B, T, Hd, V = 3, 11, 16, 37
    h = torch.randn(B, T, Hd, generator=gen, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(V, Hd, generator=gen) * 0.5).requires_grad_(w_grad)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :4] = IGNORE_INDEX  # a prompt that is not scored
    labels[2, 7] = IGNORE_INDEX
    wanted = (h, w) if w_grad else (h,)
    ref = hf_loss(h, w, labels)
    got = lm_loss(h, w, labels, rows=rows)
    assert got.dtype == torch.float32 and got.shape == ()
    assert rel(got, ref) < 1e-5
    g_ref = torch.autograd.grad(ref * 3.0, wanted)  # an upstream gradient that is not 1
    g = torch.autograd.grad(got * 3.0, wanted)
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype and rel(a, b) < 1e-5


def test_lm_loss_all_ignored_is_zero():
    h = torch.randn(2, 5, 8, requires_grad=True)
    w = torch.randn(13, 8)
    loss = lm_loss(h, w, torch.full((2, 5), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().max().item() == 0.0


def test_softmax_grad_rows_reference():
    """The in-place contract itself: rows become softmax - onehot, ignored rows zeros, loss = CE."""
    x = torch.randn(6, 29)
    t = torch.tensor([0, 28, 5, IGNORE_INDEX, 3, 3])
    want_loss = torch.nn.functional.cross_entropy(x, t, ignore_index=IGNORE_INDEX, reduction="none")
    want = torch.softmax(x, -1) - torch.nn.functional.one_hot(t.clamp_min(0), 29)
    want[3] = 0
    y = x.clone()
    loss = softmax_grad_rows(y, t)
    assert torch.allclose(loss, want_loss, atol=1e-6) and torch.allclose(y, want, atol=1e-6)


def test_chunk_rows():
    assert chunk_rows(49152) == 4096 and chunk_rows(128256) == 2048 and chunk_rows(1 << 40) == 1


def test_finetune_loss_takes_the_chunked_path(tmp_path):
    """Stage 2's loss_fn: the chunked loss and HF's agree in value and in LoRA's gradients on a tiny
    converted model; logit distillation and no-grad calls keep HF's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from linearize import LinearizeConfig, convert
    from linearize.finetune import add_lora, chunked_head, make_finetune_loss
    from linearize.recipes import FinetuneConfig

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = convert(LlamaForCausalLM(cfg), LinearizeConfig(method="lizard", window=4, feature_dim=8))
    pm = add_lora(model, FinetuneConfig())
    for p in pm.parameters():  # LoRA's B starts at zero: make the adapter matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(0, 97, (2, 13))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    losses, grads = [], []
    for chunked in (True, False):
        fc = FinetuneConfig(chunked_lm_loss=chunked)
        assert (chunked_head(pm, pm, fc) is not None) == chunked
        loss, extras = make_finetune_loss(pm, fc)(pm, batch)
        params = [p for p in pm.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(loss, params))
        losses.append(loss.detach())
    assert rel(losses[0], losses[1]) < 1e-5
    for a, b in zip(*grads):
        assert rel(a, b) < 1e-4
    assert chunked_head(pm, pm, FinetuneConfig(distill_weight=0.5)) is None
    with torch.no_grad():
        assert chunked_head(pm, pm, FinetuneConfig()) is None
