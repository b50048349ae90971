"""The decoding shortcuts of the transformers backend keep transformers' semantics exactly:
the nucleus warper keeps the tokens of TemperatureLogitsWarper + TopPLogitsWarper, and the
preallocated cache layer returns the keys and values a DynamicLayer would."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicCache, DynamicLayer

from cyclealign.models.kv_cache import PreallocatedLayer, preallocate
from cyclealign.policy.nucleus import TemperedNucleusWarper


def reference(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    tempered = TemperatureLogitsWarper(temperature)(ids, scores)
    return TopPLogitsWarper(top_p)(ids, tempered) if top_p < 1 else tempered


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("spread", [0.5, 3.0, 8.0])  # flat to peaked distributions
def test_nucleus_keeps_the_same_tokens_as_transformers(top_p, spread):
    gen = torch.Generator().manual_seed(int(top_p * 100 + spread))
    scores = torch.randn(16, 5000, generator=gen) * spread
    ids = torch.zeros(16, 1, dtype=torch.long)
    warper = TemperedNucleusWarper(0.9, top_p, candidates=64)
    ours, ref = warper(ids, scores), reference(scores, 0.9, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.equal(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])  # the tempered scores, bit for bit
    if spread == 0.5 and top_p < 1:
        assert warper.full_sorts > 0  # flat rows: nucleus wider than 64 candidates, sorted in full


def test_nucleus_samples_the_same_draws():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(8, 2000, generator=gen) * 4
    ids = torch.zeros(8, 1, dtype=torch.long)
    draws = []
    for scores_fn in (lambda s: TemperedNucleusWarper(0.7, 0.9, candidates=32)(ids, s), lambda s: reference(s, 0.7, 0.9)):
        torch.manual_seed(0)
        draws.append(torch.multinomial(torch.softmax(scores_fn(scores), -1), 1))
    assert torch.equal(*draws)


def test_nucleus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="top_p"):
        TemperedNucleusWarper(1.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        TemperedNucleusWarper(0.0, 0.9)


def test_preallocated_layer_matches_dynamic_layer():
    torch.manual_seed(0)
    plain, grown = DynamicLayer(), PreallocatedLayer(reserve=3)
    steps = [torch.randn(2, 3, t, 4) for t in (5, 1, 1, 1, 1, 2, 1)]  # outgrows the reserve twice
    for k in steps:
        a, b = plain.update(k, -k), grown.update(k, -k)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert grown.get_seq_length() == plain.get_seq_length() == 12
    # methods that replace the tensors: the next update moves them into a new buffer
    plain.batch_repeat_interleave(2)
    grown.batch_repeat_interleave(2)
    plain.crop(-2)
    grown.crop(-2)
    k = torch.randn(4, 3, 1, 4)
    a, b = plain.update(k, k), grown.update(k, k)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert b[0].shape == (4, 3, 11, 4)


def test_preallocate_converts_a_filled_cache_in_place():
    cache = DynamicCache()
    k = torch.randn(2, 3, 6, 4)
    for layer in range(2):
        cache.update(k, k + layer, layer)
    preallocate(cache, reserve=8)
    assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    step = torch.randn(2, 3, 1, 4)
    keys, values = cache.update(step, step, 1)
    assert torch.equal(keys, torch.cat([k, step], -2)) and torch.equal(values, torch.cat([k + 1, step], -2))
    assert cache.get_seq_length() == 6
