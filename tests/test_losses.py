import math

import torch

from cyclealign.logprobs import mean_logprob, token_logprobs
from cyclealign.train.losses import pro_loss, sft_loss


def test_pro_loss_matches_hand_computation():
    s = [-0.5, -1.0, -2.0]  # best first
    # -log(e^s1/(e^s1+e^s2+e^s3)) - log(e^s2/(e^s2+e^s3))
    e = [math.exp(x) for x in s]
    expected = -math.log(e[0] / sum(e)) - math.log(e[1] / (e[1] + e[2]))
    got = pro_loss(torch.tensor([s]))
    assert got.shape == (1,)
    assert float(got[0]) == pytest_approx(expected)


def test_pro_loss_temperature_and_mask():
    s = torch.tensor([[1.0, 0.0, 5.0, 7.0]])
    mask = torch.tensor([[True, True, False, False]])
    t = 0.5
    # only two real responses: -log(e^{1/t} / (e^{1/t} + e^{0}))
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    assert float(pro_loss(s, mask, temperature=t)[0]) == pytest_approx(expected)


def test_pro_loss_prefers_correct_order():
    good = pro_loss(torch.tensor([[-0.1, -1.0, -3.0]]))
    bad = pro_loss(torch.tensor([[-3.0, -1.0, -0.1]]))
    assert float(good[0]) < float(bad[0])


def test_pro_loss_gradient_pushes_best_up():
    s = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    pro_loss(s).sum().backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 2]


def test_sft_and_mean_logprob_on_literals():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # [1, 2, 3]
    labels = torch.tensor([[0, 1]])
    lp = token_logprobs(logits, labels)
    assert torch.allclose(lp, torch.log(torch.tensor([[0.5, 0.8]])))
    mask = torch.tensor([[0, 1]])
    assert float(mean_logprob(lp, mask)[0]) == pytest_approx(math.log(0.8))
    assert float(sft_loss(lp, torch.tensor([[1, 1]]))[0]) == pytest_approx(-(math.log(0.5) + math.log(0.8)) / 2)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-5, abs=1e-6)
