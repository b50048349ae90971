"""Ranking losses as pure tensor functions.

Every loss takes per-response scores in **label order, best first**, as ``[batch, N]`` with a
``[batch, N]`` bool mask of real responses (lists shorter than N are right-padded), and returns
``[batch]`` losses in nats. Which score each loss uses:

- PRO and RRHF: the length-normalised log-likelihood (mean token log-prob) of each response;
- DPO-PL and LiPO: the implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` from
  sequence (summed) log-probs, see :func:`implicit_rewards`.
"""

from __future__ import annotations

import math  # noqa: F401  (the doctests use it)

import torch


def _full_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()


def plackett_luce_nll(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the label ranking under the Plackett-Luce model.

    ``L = - sum_{k=1}^{n-1} log( exp(s_k) / sum_{i=k}^{n} exp(s_i) )`` for scores ``s_1..s_n``
    in label order (Plackett 1975; Luce 1959).

    Args:
        scores: ``[batch, N]`` in label order, best first.
        mask: ``[batch, N]`` True on real responses; ``None`` = all real.
    Returns:
        ``[batch]`` nats.

    >>> round(float(plackett_luce_nll(torch.tensor([[0.0, 0.0, 0.0]]))[0]), 4)  # log 3 + log 2
    1.7918
    """
    mask = _full_mask(scores, mask)
    z = scores.masked_fill(~mask, float("-inf"))  # [B, N]
    # Denominator of step k: logsumexp over positions k..n (a reversed cumulative logsumexp).
    tail = torch.logcumsumexp(z.flip(-1), dim=-1).flip(-1)  # [B, N]
    step = (tail - z).masked_fill(~mask, 0.0)  # -log P(pick k among k..n)
    # The last real position contributes log(1) = 0, so summing over all real ones is exact.
    return step.sum(-1)


def pro_loss(scores: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Preference Ranking Optimization: Plackett-Luce over length-normalised log-likelihoods.

    Song et al. 2023, "Preference Ranking Optimization for Human Alignment" (arXiv 2306.17492),
    Eq. 7 with a fixed temperature ``T`` in place of the reward-dependent one::

        L = - sum_{k=1}^{n-1} log( exp(s_k / T) / sum_{i=k}^{n} exp(s_i / T) )

    Args:
        scores: ``[batch, N]`` mean token log-probs in label order, best first.
        mask: ``[batch, N]`` True on real responses; each list needs >= 2.
        temperature: ``T > 0``.
    Returns:
        ``[batch]`` nats.
    """
    return plackett_luce_nll(scores / temperature, mask)


def pro_reward_gap_loss(
    scores: torch.Tensor, mask: torch.Tensor | None = None, rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """PRO with its reward-gap temperatures (Song et al. 2023, arXiv 2306.17492, Eq. 8-9).

    At step ``k`` each worse response ``i > k`` is scaled by ``T_k^i = r_k - r_i`` and the
    preferred one by ``T_k^k = max_{i>k} T_k^i``::

        L = - sum_{k=1}^{n-1} log( exp(s_k T_k^k) / (exp(s_k T_k^k) + sum_{i>k} exp(s_i T_k^i)) )

    (the form of PRO's reference code, where the temperatures multiply the scores). A
    black-box ranking gives no reward values, so by default ``r_k = -k`` (label position):
    the gap is the number of places between two responses, and a pair far apart in the
    ranking weighs more than a neighbouring one.

    Args:
        scores: ``[batch, N]`` mean token log-probs in label order, best first.
        mask: ``[batch, N]`` True on real responses.
        rewards: ``[batch, N]`` rewards, decreasing along each list; ``None`` = ``-position``.
    Returns:
        ``[batch]`` nats.

    >>> s = torch.tensor([[-1.0, -1.0, -1.0]])  # step 1: -2 vs -1, -2; step 2: -1 vs -1
    >>> round(float(pro_reward_gap_loss(s)[0]), 4) == round(math.log(2 + math.e) + math.log(2), 4)
    True
    """
    mask = _full_mask(scores, mask)
    n = scores.shape[-1]
    if rewards is None:
        rewards = -torch.arange(n, device=scores.device, dtype=scores.dtype).expand_as(scores)
    total = torch.zeros(scores.shape[0], device=scores.device, dtype=scores.dtype)
    for k in range(n - 1):
        rest = mask[:, k + 1 :]  # [B, N-k-1] real worse responses
        live = mask[:, k] & rest.any(-1)  # [B] lists with a step k
        gaps = (rewards[:, k : k + 1] - rewards[:, k + 1 :]).masked_fill(~rest, 0.0)  # [B, N-k-1]
        pos_t = gaps.max(-1).values  # [B]
        neg = (scores[:, k + 1 :] * gaps).masked_fill(~rest, float("-inf"))
        pos = scores[:, k] * pos_t
        step = torch.logsumexp(torch.cat([pos.unsqueeze(-1), neg], -1), -1) - pos
        total = total + step.masked_fill(~live, 0.0)
    return total


def rrhf_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RRHF ranking loss: a hinge on every mis-ordered pair of length-normalised log-likelihoods.

    Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback"
    (arXiv 2304.05302), Eq. 2: ``L_rank = sum_{r_i < r_j} max(0, p_i - p_j)``, where response
    ``j`` is preferred to ``i``. In label order (``k < l`` means ``k`` is better) that is
    ``sum_{k<l} max(0, s_l - s_k)``.

    Args:
        scores: ``[batch, N]`` mean token log-probs in label order, best first.
        mask: ``[batch, N]`` True on real responses.
    Returns:
        ``[batch]`` nats.

    >>> float(rrhf_loss(torch.tensor([[-1.0, -0.5, -2.0]]))[0])  # only (1st, 2nd) is mis-ordered
    0.5
    """
    mask = _full_mask(scores, mask)
    diff = scores.unsqueeze(-2) - scores.unsqueeze(-1)  # [B, N, N]: diff[k, l] = s_l - s_k
    n = scores.shape[-1]
    better_first = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)  # k < l
    pair = better_first & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return (diff.clamp(min=0) * pair).sum((-1, -2))


def anchor_kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed per-token KL anchor to a reference policy, on the tokens of given responses.

    The k3 estimator of ``KL(pi || pi_ref)`` at each token, ``exp(r) - 1 - r`` with
    ``r = log pi_ref(t) - log pi(t)`` (Schulman 2020, "Approximating KL Divergence"; the KL term of
    GRPO, Shao et al. 2024, arXiv 2402.03300, Eq. 4). It is 0 where the policy gives a token the
    reference's log-prob, never negative, and grows exponentially as the policy pushes a token
    below the reference (the gradient towards ``log pi`` is ``1 - exp(r)``).

    Args:
        logp, ref_logp: ``[R, T]`` per-token log-probs (nats) of the policy and the reference.
        mask: ``[R, T]`` 1 on the tokens that count.
    Returns:
        ``[R]`` the estimator summed over each row's counted tokens (nats).

    >>> lp = torch.tensor([[-1.0, -2.0, 0.0]])
    >>> float(anchor_kl_k3(lp, lp, torch.tensor([[1, 1, 0]]))[0])
    0.0
    >>> round(float(anchor_kl_k3(torch.tensor([[-2.0]]), torch.tensor([[-1.0]]), torch.tensor([[1]]))[0]), 4)  # e - 2
    0.7183
    """
    r = (ref_logp - logp).clamp(max=20.0)  # a token pushed 20 nats below the reference already costs e^20
    k3 = torch.exp(r) - 1.0 - r
    return (k3 * mask.to(k3.dtype)).sum(-1)


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (Rafailov et al. 2023, Eq. 5).

    Args:
        policy_logps, ref_logps: ``[batch, N]`` sequence (summed) log-probs of each response.
    Returns:
        ``[batch, N]`` rewards (nats, scaled by ``beta``).
    """
    return beta * (policy_logps - ref_logps)


def dpo_pl_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """DPO for rankings: the Plackett-Luce NLL of the label ranking over implicit rewards.

    Rafailov et al. 2023, "Direct Preference Optimization" (arXiv 2305.18290), Appendix A.3,
    Eq. 18: ``L = - log prod_{k=1}^{K} exp(r(y_k)) / sum_{j=k}^{K} exp(r(y_j))``, with
    ``r = beta log(pi / pi_ref)`` from :func:`implicit_rewards`. For K = 2 it is the DPO loss.

    >>> r = torch.tensor([[0.3, -0.2]])
    >>> round(float(dpo_pl_loss(r)[0]), 6) == round(-math.log(1 / (1 + math.exp(-0.5))), 6)
    True
    """
    return plackett_luce_nll(rewards, mask)


def lipo_lambda_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """LiPO-lambda: lambda-weighted pairwise logistic loss over implicit rewards.

    Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank"
    (arXiv 2402.01878), Eq. 6 with the LambdaLoss weight of Eq. 7::

        L = - sum_{psi_i > psi_j} Delta_ij * log sigmoid(s_i - s_j)
        Delta_ij = |G_i - G_j| * |1 / D(tau(i)) - 1 / D(tau(j))|

    with ``s`` the implicit rewards, gains ``G_i = 2^{psi_i} - 1``, discounts
    ``D(tau) = log2(1 + tau)``, and ``tau(i)`` the 1-based rank of response ``i`` when sorted
    by ``s`` (descending; the weights take no gradient). A ranking carries no graded labels, so
    the label of the response at label position ``k`` (0-based) of a list of ``n`` is
    ``psi = (n - 1 - k) / (n - 1)``, in [0, 1] like the paper's normalised rewards.

    Args:
        rewards: ``[batch, N]`` implicit rewards in label order, best first.
        mask: ``[batch, N]`` True on real responses.
    Returns:
        ``[batch]`` nats.
    """
    mask = _full_mask(rewards, mask)
    n_real = mask.sum(-1, keepdim=True).clamp(min=2).to(rewards.dtype)  # [B, 1]
    pos = torch.arange(rewards.shape[-1], device=rewards.device, dtype=rewards.dtype).expand_as(rewards)
    psi = ((n_real - 1 - pos) / (n_real - 1)).masked_fill(~mask, 0.0)  # [B, N]
    gain = torch.pow(2.0, psi) - 1
    with torch.no_grad():
        s = rewards.masked_fill(~mask, float("-inf"))
        order = s.argsort(dim=-1, descending=True, stable=True)
        tau = torch.empty_like(order)
        tau.scatter_(-1, order, torch.arange(1, rewards.shape[-1] + 1, device=rewards.device).expand_as(order))
        inv_discount = 1.0 / torch.log2(1.0 + tau.to(rewards.dtype))  # [B, N]
        delta = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (
            inv_discount.unsqueeze(-1) - inv_discount.unsqueeze(-2)
        ).abs()  # [B, N, N]
    n = rewards.shape[-1]
    better_first = torch.ones(n, n, dtype=torch.bool, device=rewards.device).triu(1)  # i < j: psi_i > psi_j
    pair = better_first & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    logistic = torch.nn.functional.logsigmoid(rewards.unsqueeze(-1) - rewards.unsqueeze(-2))  # [B, N, N]
    return -(delta * logistic * pair).sum((-1, -2))


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of a response (the SFT term).

    Args:
        token_logp: ``[batch, seq]`` token log-probs.
        mask: ``[batch, seq]`` 1 on response tokens.
        reduction: ``"mean"`` (per token) or ``"sum"`` (over the response's tokens, as PRO's
            reference code does).
    Returns:
        ``[batch]`` NLL in nats (per token for ``"mean"``).

    Raises:
        ValueError: an unknown ``reduction``.

    >>> lp, m = torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1, 1, 0]])
    >>> float(sft_loss(lp, m)[0]), float(sft_loss(lp, m, "sum")[0])
    (2.0, 4.0)
    """
    mask = mask.to(token_logp.dtype)
    total = -(token_logp * mask).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.sum(-1).clamp(min=1)
    raise ValueError(f"sft reduction must be 'mean' or 'sum', got {reduction!r}")


def pairwise_accuracy(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of response pairs a score orders as the label does (ties count as wrong).

    Args:
        scores: ``[batch, N]`` in label order, best first.
        mask: ``[batch, N]`` True on real responses.
    Returns:
        ``[]`` the fraction over every labelled pair of the batch (``n(n-1)/2`` per list).

    >>> float(pairwise_accuracy(torch.tensor([[3.0, 1.0, 2.0]])))  # (1,2) and (1,3) right, (2,3) wrong
    0.6666666865348816
    """
    mask = _full_mask(scores, mask)
    n = scores.shape[-1]
    better_first = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    pair = better_first & mask.unsqueeze(-1) & mask.unsqueeze(-2)  # [B, N, N]: k < l, both real
    right = scores.unsqueeze(-1) > scores.unsqueeze(-2)  # [B, N, N]: s_k > s_l
    return (right & pair).sum().float() / pair.sum().clamp(min=1).float()


