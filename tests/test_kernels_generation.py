"""linearize.generation on CPU (eager path, PyTorch references): same tokens as HF generate."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import linearize
from linearize import LinearizeConfig, convert
from linearize.generation import fast_generate, stream_generate


def tiny(method):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = convert(LlamaForCausalLM(cfg).eval(), LinearizeConfig(method=method, window=4, feature_dim=8,
                                                               chunk_size=8, num_slots=8))
    with torch.no_grad():
        for _, p in linearize.new_parameters(m):
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("method", ["hedgehog", "lizard", "gsa"])
def test_fast_generate_matches_hf_generate(method):
    m = tiny(method)
    x = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(1))
    ref = m.generate(x, max_new_tokens=9, do_sample=False)
    out, stats = fast_generate(m, x, 9, return_stats=True)
    assert torch.equal(out, ref)
    assert stats.new_tokens == 9 and not stats.graph
    chunks = [new for new, _ in stream_generate(m, x, 9, chunk=4)]
    assert [c.shape[1] for c in chunks] == [4, 4, 1]
    assert torch.equal(torch.cat(chunks, 1), ref[:, 11:])
