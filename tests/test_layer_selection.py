"""Choosing the layers that stay softmax from the teacher's retrieval heads (linearize/layer_selection.py)."""
from types import SimpleNamespace

import pytest
import torch

from linearize.eval.probes import ProbeSample
from linearize.layer_selection import choose_softmax_layers, copy_sources, probe_samples, retrieval_scores


def test_copy_sources_finds_every_earlier_copy():
    ids = [5, 1, 2, 3, 9, 1, 2, 3, 7, 4, 1, 2, 3]
    # the answer [1, 2, 3] starts at 10 (predicted from positions 9, 10, 11); copies at 1 and 5
    assert copy_sources(ids, [9, 10, 11], [1, 2, 3]) == [[1, 5], [2, 6], [3, 7]]
    assert copy_sources(ids, [3, 4], [9, 1]) == [[], []]  # no copy before position 4


class FakeTeacher(torch.nn.Module):
    """Attention weights made to order: head (layer 1, head 2) puts ``mass`` on the copy source of
    every query, every other head spreads uniformly over the causal prefix."""

    def __init__(self, layers, heads, targets, mass):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.layers, self.heads, self.targets, self.mass = layers, heads, targets, mass

    def forward(self, input_ids, output_attentions, use_cache):
        T = input_ids.shape[1]
        uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
        att = [uniform.expand(1, self.heads, T, T).clone() for _ in range(self.layers)]
        for p, src in self.targets:
            row = torch.full((T,), (1 - self.mass) / (p + 1 - len(src)))
            row[p + 1:] = 0
            row[src] = self.mass / len(src)
            att[1][0, 2, p] = row
        return SimpleNamespace(attentions=tuple(att))


def test_retrieval_scores_find_the_copying_head():
    ids = list(range(100, 140)) + [7, 8] + list(range(140, 160)) + [50, 7, 8]
    sample = ProbeSample(ids, [([62, 63], [7, 8])])  # answer at 63, 64; its copy at 40, 41
    model = FakeTeacher(layers=4, heads=3, targets=[(62, [40]), (63, [41])], mass=0.8)
    scores = retrieval_scores(model, [sample])
    assert scores.shape == (4, 3)
    assert scores[1, 2] == pytest.approx(0.8, abs=1e-6)
    others = scores.clone()
    others[1, 2] = 0
    assert others.max() < 0.05  # uniform heads put ~1/63 on one token
    assert choose_softmax_layers(scores, 1) == [1]
    two = choose_softmax_layers(scores, 2)
    assert 1 in two and len(two) == 2 and two == sorted(two)
    with pytest.raises(ValueError, match="no answer token has an earlier copy"):
        retrieval_scores(model, [ProbeSample(ids, [([3, 4], [99, 98])])])
    with pytest.raises(ValueError, match="k=5"):
        choose_softmax_layers(scores, 5)


def test_real_probes_have_copy_sources(smollm2_tokenizer):
    """Every MQAR and passkey answer token of the real tokenizer's probes has an earlier copy
    (otherwise the score would silently measure nothing)."""
    for sample in probe_samples(smollm2_tokenizer, 256, 2):
        for positions, answer in sample.answers:
            assert all(copy_sources(sample.input_ids, positions, answer)), answer
