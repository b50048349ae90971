"""Generation on the real embedded SmolLM2 model."""

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.models.logprobs import response_logprobs
from cyclealign.policy.hf import TransformersPolicy
from cyclealign.records import PromptRecord

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy(embedded_model_dir):
    cfg = build_config(**{"generation.num_samples": 3, "generation.max_new_tokens": 12, "generation.batch_size": 2})
    return TransformersPolicy(str(embedded_model_dir), cfg.model, cfg.generation)


PROMPTS = [
    PromptRecord("a", [{"role": "user", "content": "Name a fruit."}]),
    PromptRecord("b", [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "I am locked out."}]),
    PromptRecord("c", [{"role": "user", "content": "Say hello."}]),
]


def test_sample_gives_distinct_responses_with_logprobs_equal_to_a_forward_pass(policy):
    seen = []
    gens = policy.sample(PROMPTS, seed=0, progress=seen.append)
    assert sum(seen) == len(PROMPTS)
    assert [g.prompt_id for g in gens] == ["a", "b", "c"]
    for g in gens:
        assert 1 <= len(g.responses) <= 3
        assert len(set(g.responses)) == len(g.responses)
        assert len(g.response_token_ids) == len(g.logprob_mean) == len(g.finished) == len(g.responses)
        # The log-likelihood taken from generate()'s raw logits equals a separate forward pass.
        rows = [g.prompt_token_ids + ids for ids in g.response_token_ids]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), policy.tokenizer.pad_token_id)
        attn = torch.zeros_like(ids)
        resp = torch.zeros_like(ids)
        for i, (r, resp_ids) in enumerate(zip(rows, g.response_token_ids)):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
            resp[i, len(g.prompt_token_ids) : len(r)] = 1
        with torch.no_grad():
            lp = response_logprobs(policy.model, ids, attn, resp)
        mean = lp.sum(-1) / resp[:, 1:].sum(-1)
        assert torch.allclose(mean, torch.tensor(g.logprob_mean), atol=2e-3), (mean, g.logprob_mean)
        for ids_, fin in zip(g.response_token_ids, g.finished):
            assert (ids_[-1] == policy.tokenizer.eos_token_id) == fin
            assert len(ids_) <= 12


def test_sampling_is_seeded(policy):
    a = policy.sample(PROMPTS[:1], seed=7)[0].responses
    b = policy.sample(PROMPTS[:1], seed=7)[0].responses
    assert a == b


def test_greedy_is_the_argmax_decoding_whatever_the_batching(policy):
    both = policy.greedy(PROMPTS[:2], max_new_tokens=10)  # batch_size 2: one left-padded batch
    assert [g.prompt_id for g in both] == ["a", "b"]
    for g in both:
        assert len(g.responses) == len(g.response_token_ids) == len(g.logprob_mean) == len(g.finished) == 1
        assert len(g.response_token_ids[0]) <= 10
        # The same tokens as an unpadded greedy generate() of this prompt alone.
        ids = torch.tensor([g.prompt_token_ids])
        out = policy.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10,
            pad_token_id=policy.tokenizer.pad_token_id, eos_token_id=policy.tokenizer.eos_token_id,
        )
        assert out[0, ids.shape[1] :].tolist() == g.response_token_ids[0]
    assert policy.greedy(PROMPTS[1:2], max_new_tokens=10)[0].responses == both[1].responses


def test_sample_takes_a_token_cap_other_than_the_configured_one(policy):
    gens = policy.sample(PROMPTS[:1], seed=0, max_new_tokens=3)
    assert all(len(ids) <= 3 for ids in gens[0].response_token_ids)


def test_close_frees_the_model_and_the_next_call_reopens_it(policy, tmp_path):
    before = policy.sample(PROMPTS[:1], seed=3)[0]
    policy.close()
    assert policy._model is None
    policy.close()  # a no-op when closed
    again = policy.sample(PROMPTS[:1], seed=3)[0]  # reloaded lazily, same results
    assert again == before and policy._model is not None
    policy.close()
    assert policy.greedy(PROMPTS[:1], max_new_tokens=4)[0].responses  # greedy reopens it too
    policy.close()
    policy.load_adapter(None)  # reopens at once with the remembered adapter
    assert policy._model is not None and policy.adapter is None


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.9, 0.95), (0.7, 0.5)])
def test_prefilled_sampling_draws_what_generate_with_num_return_sequences_draws(policy, temperature, top_p):
    """The prompt prefilled once and its cache shared by the N samples, decoding into a
    preallocated cache with the candidates-only nucleus: the same seed gives the same responses
    as the plain ``generate(num_return_sequences=N)`` over the same left-padded batch with
    transformers' own temperature and top-p warpers (up to float rounding, which may flip a
    rare draw at a probability boundary)."""
    from cyclealign.models.tokenizer import encode_prompt

    tok = policy.tokenizer
    ids = [encode_prompt(tok, p, 256) for p in PROMPTS]  # of different lengths: left padding
    torch.manual_seed(7)
    shared = policy.sample_batch(ids, n=3, seed=None, temperature=temperature, top_p=top_p, max_new_tokens=12)
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    torch.manual_seed(7)
    out = policy.model.generate(
        input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
        max_new_tokens=12, num_return_sequences=3, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    plain = out[:, width:].tolist()  # [B*3, T], rows in the order of the shared samples
    got = [s.token_ids for row in shared for s in row]
    assert len(got) == len(plain) == 9
    same = sum(g == p[: len(g)] for g, p in zip(got, plain))
    assert same >= len(got) - 1, (got, plain)
