"""Device placement and dtypes: generation, the shared-prompt training forward and a whole
``iterate`` on each available device (CPU always; CUDA where present), on a tiny random Llama
(:mod:`tiny_model`), so that the CUDA code paths run wherever a GPU is, without the embedded model."""

import json

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.models.logprobs import response_logprobs
from cyclealign.models.tokenizer import encode_prompt
from cyclealign.policy.hf import TransformersPolicy
from cyclealign.records import PromptRecord
from cyclealign.train.examples import collate_lists
from cyclealign.train.lora import load_trainable_policy
from cyclealign.train.shared_prompt import shared_prompt_length
from packed_grads import loss_and_grads, packed, plain
from tiny_model import build_tiny_model_dir

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
PROMPTS = [
    PromptRecord("a", [{"role": "user", "content": "Name a color."}]),
    PromptRecord("b", [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Why?"},
                       {"role": "user", "content": "I am locked out of my house, you see."}]),
    PromptRecord("c", [{"role": "user", "content": "Say hi."}]),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _forward_means(model, tokenizer, g, device):
    """Mean token log-prob of each of ``g``'s responses by a separate forward pass: ``[n]``."""
    rows = [g.prompt_token_ids + ids for ids in g.response_token_ids]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (r, resp_ids) in enumerate(zip(rows, g.response_token_ids)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        resp[i, len(g.prompt_token_ids) : len(r)] = 1
    with torch.no_grad():
        lp = response_logprobs(model, ids.to(device), attn.to(device), resp.to(device)).float().cpu()
    return lp.sum(-1) / resp[:, 1:].sum(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_on_device_keeps_generates_draws_and_log_likelihoods(tiny_dir, device):
    """float32: the prefilled-prompt samples are those of ``generate(num_return_sequences=N)``
    and their log-likelihoods those of a forward pass; the model sits on ``device``."""
    cfg = build_config(**{"model.device": device, "model.dtype": "float32", "generation.num_samples": 3,
                          "generation.max_new_tokens": 10, "generation.batch_size": 3})
    policy = TransformersPolicy(str(tiny_dir), cfg.model, cfg.generation)
    assert next(policy.model.parameters()).device.type == device
    gens = policy.sample(PROMPTS, seed=0)
    assert [g.prompt_id for g in gens] == ["a", "b", "c"]
    for g in gens:
        assert len(g.responses) >= 2
        mean = _forward_means(policy.model, policy.tokenizer, g, device)
        assert torch.allclose(mean, torch.tensor(g.logprob_mean), atol=2e-3), (mean, g.logprob_mean)

    tok = policy.tokenizer
    ids = [encode_prompt(tok, p, 256) for p in PROMPTS]
    torch.manual_seed(7)
    shared = policy.sample_batch(ids, n=3, seed=None, temperature=1.0, top_p=1.0, max_new_tokens=10)
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids]).to(device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids]).to(device)
    torch.manual_seed(7)
    out = policy.model.generate(
        input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
        max_new_tokens=10, num_return_sequences=3, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    plain = out[:, width:].tolist()
    got = [s.token_ids for row in shared for s in row]
    assert sum(g == p[: len(g)] for g, p in zip(got, plain)) >= len(got) - 1, (got, plain)
    policy.close()


@pytest.mark.parametrize("device", DEVICES)
def test_packed_prefill_caches_what_the_padded_prefill_caches(tiny_dir, device):
    """The prompts prefilled packed in one row (no padding) give the padded batch's keys and
    values at every real position."""
    from cyclealign.models.kv_cache import cache_kwarg, empty_cache, left_padded_positions, output_cache
    from cyclealign.policy.hf import _packed_prefill

    cfg = build_config(**{"model.device": device, "model.dtype": "float32"})
    policy = TransformersPolicy(str(tiny_dir), cfg.model, cfg.generation)
    ids = [encode_prompt(policy.tokenizer, p, 256) for p in PROMPTS]
    width = max(map(len, ids))
    prefix = torch.tensor([[0] * (width - len(p)) + p for p in ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids], device=device)
    with torch.no_grad():
        packed = _packed_prefill(policy.model, prefix, mask)
        out = policy.model(input_ids=prefix, attention_mask=mask, position_ids=left_padded_positions(mask),
                           use_cache=True, **{cache_kwarg(policy.model): empty_cache(policy.model)})
    padded = output_cache(out)
    assert packed is not None and len(packed.layers) == len(padded.layers) == 2
    real = mask.bool()  # [B, W]
    for a, b in zip(packed.layers, padded.layers):
        assert a.keys.shape == b.keys.shape
        for x, y in ((a.keys, b.keys), (a.values, b.values)):  # [B, heads, W, dim]
            assert torch.allclose(x.permute(0, 2, 1, 3)[real], y.permute(0, 2, 1, 3)[real], atol=1e-5)
    policy.close()


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_in_the_devices_default_dtype(tiny_dir, device):
    """``model.dtype=auto``: bfloat16 on CUDA, float32 on CPU; log-likelihoods stay finite and
    close to a forward pass in that dtype."""
    cfg = build_config(**{"model.device": device, "generation.num_samples": 3, "generation.max_new_tokens": 10})
    policy = TransformersPolicy(str(tiny_dir), cfg.model, cfg.generation)
    want = torch.bfloat16 if device == "cuda" else torch.float32
    assert next(policy.model.parameters()).dtype == want
    gens = policy.sample(PROMPTS[:2], seed=1)
    for g in gens:
        means = torch.tensor(g.logprob_mean)
        assert torch.isfinite(means).all() and (means < 0).all()
        tol = 5e-2 if want == torch.bfloat16 else 2e-3
        assert torch.allclose(_forward_means(policy.model, policy.tokenizer, g, device), means, atol=tol)
    policy.close()


@pytest.mark.parametrize("device,dtype,attention", [
    ("cpu", torch.float32, "sdpa"),
    ("cpu", torch.float32, "eager"),
    pytest.param("cuda", torch.float32, "sdpa", marks=NEEDS_CUDA),
    pytest.param("cuda", torch.bfloat16, "sdpa", marks=NEEDS_CUDA),
])
def test_shared_prompt_training_forward_on_device(tiny_dir, device, dtype, attention):
    """The packed lists (prompt run once) give the plain ``[N, seq]`` forward's log-probs, loss
    and LoRA gradients on ``device`` with SDPA's boolean or eager attention's additive 4D mask
    (float32: tight; bfloat16: within bf16 rounding)."""
    from cyclealign.models.tokenizer import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    cfg = build_config()
    torch.manual_seed(0)
    model = load_trainable_policy(str(tiny_dir), None, cfg.train, torch.device(device), dtype)
    model.get_base_model().set_attn_implementation(attention)
    assert model.get_base_model().config._attn_implementation == attention
    with torch.no_grad():  # LoRA B starts at zero: give it weight so that every LoRA gradient is non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    texts = [["Sure, here is how.", "I can't help with that, sorry.", "No."], ["Blue.", "Hello! How are you?"]]
    rows = [
        {"prompt_ids": encode_prompt(tok, p, 384),
         "responses_ids": [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rs]}
        for p, rs in zip(PROMPTS[1:], texts)
    ]
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in collate_lists(rows, tok.pad_token_id, 512).items()}
    assert all(
        shared_prompt_length(batch["input_ids"][a:b], batch["attention_mask"][a:b], batch["response_mask"][a:b])
        for a, b in ((0, 3), (3, 5))
    )

    logp_a, loss_a, grads_a = loss_and_grads(model, batch, plain)
    logp_b, loss_b, grads_b = loss_and_grads(model, batch, packed)
    assert logp_b.device.type == device
    if dtype == torch.float32:
        assert torch.allclose(logp_b, logp_a, atol=2e-4)
        assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-4)
    else:
        assert torch.allclose(logp_b, logp_a, atol=0.1)
        assert loss_b == pytest.approx(loss_a, rel=2e-2)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, g in grads_a.items():
        assert float(g.abs().max()) > 0, name
        scale = float(g.abs().max())
        if dtype == torch.float32:
            assert torch.allclose(grads_b[name], g, rtol=1e-3, atol=1e-6 + 1e-3 * scale), name
        else:  # bf16: the two paths round differently; the gradients still point the same way
            cos = torch.nn.functional.cosine_similarity(grads_b[name].flatten(), g.flatten(), dim=0)
            assert cos > 0.98, (name, float(cos))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_two_rounds_of_iterate_on_device(tiny_dir, tmp_path, prompts_file, device):
    """The whole loop on ``device`` in its default dtype (bf16 training and generation on CUDA):
    sample, rank against a real local black box, train, load the adapter, sample again."""
    from cyclealign.efficacy.rules import RULES
    from cyclealign.efficacy.server import RuleBlackBox
    from cyclealign.loop import iterate
    from cyclealign.rundir import RunDir

    with RuleBlackBox(RULES["brevity"]) as box:
        cfg = build_config(**{
            "run_dir": str(tmp_path / "run"), "prompts": str(prompts_file), "rounds": 2, "prompts_per_round": 2,
            "model.name_or_path": str(tiny_dir), "model.device": device, "generation.num_samples": 3,
            "generation.max_new_tokens": 12, "ranker.base_url": box.base_url, "ranker.model": box.model,
            "ranker.cache_path": str(tmp_path / "cache.sqlite"), "train.epochs": 1,
        })
        metrics = iterate(cfg, environ={"OPENAI_API_KEY": "rule-black-box"})
    assert [m["ranked"] for m in metrics] == [2, 2]
    run = RunDir(tmp_path / "run")
    for k in range(2):
        rd = run.round(k)
        assert rd.has_adapter()
        train = json.loads(rd.train.read_text())
        assert train["steps"] == 2 and train["grad_norm"] > 0 and train["train_loss"] == train["train_loss"]
    for g in run.round(1).read_generations():  # sampled by the round-0 adapter, loaded on the device
        assert len(g.responses) >= 2 and torch.isfinite(torch.tensor(g.logprob_mean)).all()


@pytest.mark.parametrize("device", DEVICES)
def test_a_sampling_resumed_from_a_journal_draws_what_an_uninterrupted_one_draws(tiny_dir, tmp_path, device):
    """Each journalled batch keeps the torch generator state it left: with only the first batch
    journalled (a run killed after it), sampling again restores that state, draws the other
    batches as the uninterrupted call did, and leaves torch's generator (which training starts
    from) in the same state."""
    from cyclealign.rundir import GenerationJournal

    cfg = build_config(**{"model.device": device, "model.dtype": "float32", "generation.num_samples": 3,
                          "generation.max_new_tokens": 8, "generation.batch_size": 1})
    policy = TransformersPolicy(str(tiny_dir), cfg.model, cfg.generation)
    path = tmp_path / "generation_batches.jsonl"
    done: list[str] = []
    whole = policy.sample(PROMPTS, seed=5, journal=GenerationJournal(path), on_generation=lambda g: done.append(g.prompt_id))
    state = torch.get_rng_state()
    assert sorted(done) == ["a", "b", "c"] and len(GenerationJournal(path)) >= 3
    path.write_text(path.read_text().splitlines()[0] + "\n")  # only the first batch survived
    torch.manual_seed(123)  # another process: whatever state
    journal = GenerationJournal(path)
    resumed = policy.sample(PROMPTS, seed=5, journal=journal)
    assert journal.reused == 1
    assert [g.to_json() for g in resumed] == [g.to_json() for g in whole]
    assert torch.equal(torch.get_rng_state(), state)
    policy.close()
