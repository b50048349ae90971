import math

import pytest
import torch

from cyclealign.models.logprobs import mean_logprob, token_logprobs
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


def test_rrhf_loss_matches_hand_computation_with_mask():
    from cyclealign.train.losses import rrhf_loss

    s = torch.tensor([[-1.0, -0.4, -0.7, 9.0]])  # last is padding
    mask = torch.tensor([[True, True, True, False]])
    # pairs (better, worse): (0,1): max(0,-0.4+1)=0.6; (0,2): 0.3; (1,2): max(0,-0.7+0.4)=0
    assert float(rrhf_loss(s, mask)[0]) == pytest_approx(0.9)


def test_dpo_pl_loss_is_dpo_for_pairs_and_pl_for_lists():
    from cyclealign.train.losses import dpo_pl_loss, implicit_rewards

    pol = torch.tensor([[-10.0, -12.0, -11.0]])
    ref = torch.tensor([[-11.0, -11.0, -11.0]])
    r = implicit_rewards(pol, ref, beta=0.1)  # [0.1, -0.1, 0.0]
    e = [math.exp(x) for x in (0.1, -0.1, 0.0)]
    expected = -math.log(e[0] / sum(e)) - math.log(e[1] / (e[1] + e[2]))
    assert float(dpo_pl_loss(r)[0]) == pytest_approx(expected)
    # K = 2: the DPO loss -log sigmoid(r_w - r_l)
    pair = r[:, :2]
    assert float(dpo_pl_loss(pair)[0]) == pytest_approx(-math.log(1 / (1 + math.exp(-(0.1 - -0.1)))))


def test_lipo_lambda_loss_matches_hand_computation():
    from cyclealign.train.losses import lipo_lambda_loss

    r = [0.2, 0.5, -0.1]  # label order: 0 best
    n = len(r)
    psi = [(n - 1 - k) / (n - 1) for k in range(n)]
    gain = [2**p - 1 for p in psi]
    order = sorted(range(n), key=lambda i: -r[i])
    tau = {i: order.index(i) + 1 for i in range(n)}
    inv_d = {i: 1 / math.log2(1 + tau[i]) for i in range(n)}
    expected = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            delta = abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j])
            expected -= delta * math.log(1 / (1 + math.exp(-(r[i] - r[j]))))
    got = lipo_lambda_loss(torch.tensor([r + [3.0]]), torch.tensor([[True, True, True, False]]))
    assert float(got[0]) == pytest_approx(expected)


def test_all_losses_lower_for_the_labelled_order():
    from cyclealign.train.losses import dpo_pl_loss, lipo_lambda_loss, rrhf_loss

    good, bad = torch.tensor([[0.5, 0.0, -0.5]]), torch.tensor([[-0.5, 0.0, 0.5]])
    for loss in (pro_loss, rrhf_loss, dpo_pl_loss, lipo_lambda_loss):
        assert float(loss(good)[0]) < float(loss(bad)[0]), loss.__name__


def test_pro_reward_gap_equals_plain_pro_for_two_responses_and_weighs_far_pairs_more():
    from cyclealign.train.losses import pro_reward_gap_loss

    s = torch.tensor([[-1.2, -0.7]])
    assert torch.allclose(pro_reward_gap_loss(s), pro_loss(s))  # one step, gap 1: T = 1
    # A list whose worst response scores highest costs more than one whose second does.
    worst_high = pro_reward_gap_loss(torch.tensor([[-1.0, -1.5, -0.5]]))
    second_high = pro_reward_gap_loss(torch.tensor([[-1.0, -0.5, -1.5]]))
    assert worst_high > second_high
    # Masked (padding) positions change nothing.
    padded = pro_reward_gap_loss(torch.tensor([[-1.0, -0.5, 9.0]]), torch.tensor([[True, True, False]]))
    assert torch.allclose(padded, pro_reward_gap_loss(torch.tensor([[-1.0, -0.5]])))


def test_pairwise_accuracy_counts_real_pairs_only():
    from cyclealign.train.losses import pairwise_accuracy

    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 5.0, 5.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    # List 1: 6 of 6 pairs right; list 2: its one real pair is wrong.
    assert float(pairwise_accuracy(scores, mask)) == pytest.approx(6 / 7)


def test_sft_reductions():
    from cyclealign.train.losses import sft_loss

    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    m = torch.tensor([[1, 1, 0]])
    assert float(sft_loss(lp, m, "sum")[0]) == pytest.approx(3.0)
    assert float(sft_loss(lp, m, "mean")[0]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        sft_loss(lp, m, "max")
