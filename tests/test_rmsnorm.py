"""linearize.rmsnorm: the swapped-in RMSNorm computes exactly what HF's did, conversion swaps every
one, and a converted checkpoint saves and reloads with the same names and outputs."""
import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from linearize import LinearizeConfig, convert
from linearize.rmsnorm import HF_RMSNORMS, RMSNorm, swap_norms


@pytest.mark.parametrize("cls", [LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_hf_bitwise(cls, dtype):
    """Bit-for-bit on CPU, bf16 included: the same float32 mean and the same rounding before the
    weight. Also a guard: a transformers release that changes these classes' math fails here."""
    assert cls.__name__ in HF_RMSNORMS
    torch.manual_seed(0)
    hf = cls(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(48) * 0.3 + 1)
    ours = RMSNorm.from_module(hf)
    assert ours.weight is hf.weight and ours.variance_epsilon == 1e-5
    x = (torch.randn(3, 7, 48) * 4).to(dtype)
    assert torch.equal(ours(x), hf(x))
    x.requires_grad_(True)  # training takes the same reference path, with autograd
    (g_ours,) = torch.autograd.grad(ours(x).float().sum(), x)
    (g_hf,) = torch.autograd.grad(hf(x).float().sum(), x)
    assert torch.equal(g_ours, g_hf)


def test_convert_swaps_every_norm_and_reloads(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    names_before = sorted(tiny_llama.state_dict())
    ids = torch.randint(0, 211, (2, 9))
    m = convert(tiny_llama, LinearizeConfig(method="lizard", window=4, feature_dim=8))
    norms = [n for n, mod in m.named_modules() if isinstance(mod, RMSNorm)]
    assert len(norms) == 2 * m.config.num_hidden_layers + 1
    assert not [n for n, mod in m.named_modules() if type(mod).__name__ in HF_RMSNORMS]
    assert all(n in m.state_dict() for n in names_before if "norm" in n)  # same names: checkpoints unchanged
    assert swap_norms(m) == 0  # idempotent
    with torch.no_grad():
        ref = m(ids).logits
    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back.model.norm, RMSNorm)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref)
