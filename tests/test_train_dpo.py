"""Pairwise DPO baseline: rankings split into pairs, trained with TRL's own DPOTrainer on the real SmolLM2."""

import math

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.train.dpo import ranking_to_pairs, train_round_dpo
from cyclealign.train.examples import RankingExample
from cyclealign.train.lora import load_trainable_policy

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_ranking_to_pairs_counts_and_order(n):
    ex = RankingExample([7, 8], [[100 + k] for k in range(n)])  # response k has rank k (0 = best)
    every = ranking_to_pairs(ex, "all")
    adjacent = ranking_to_pairs(ex, "adjacent")
    assert len(every) == n * (n - 1) // 2 and len(adjacent) == n - 1
    assert all(p == [7, 8] for p, _, _ in every + adjacent)
    ranks = [(c[0] - 100, r[0] - 100) for _, c, r in every]
    assert ranks == [(i, j) for i in range(n) for j in range(i + 1, n)]  # chosen always ranked better
    assert [(c[0] - 100, r[0] - 100) for _, c, r in adjacent] == [(k, k + 1) for k in range(n - 1)]
    with pytest.raises(ValueError, match="adjacent"):
        ranking_to_pairs(ex, "neighbours")


def _example(tok):
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reply with one word."}], add_generation_prompt=True, return_dict=False)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("zzz qqq", "Okay then.", "Sure.")]
    return RankingExample(list(prompt), resp)


def test_dpo_trains_only_lora_from_log2_and_saves_a_peft_adapter(embedded_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.learning_rate": 1e-3, "train.epochs": 4, "train.beta": 0.5, "train.sft_weight": 0.0}).train
    device = torch.device("cpu")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg, device, torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ex = _example(tok)
    stats = train_round_dpo(
        model, [ex], cfg, tokenizer=tok, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "adapter", seed=0, device=device
    )
    # TRL's frozen "ref" adapter is gone: the model comes back with exactly the parameters it had.
    assert list(model.peft_config) == ["default"]
    assert {n for n, _ in model.named_parameters()} == set(before)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable and all("lora_" in n for n in changed)
    # 3 responses -> 3 pairs, one batch per list -> 1 step per epoch.
    assert stats.steps == 4 and stats.lists == 4 and len(stats.log_history) == 4
    first, last = stats.log_history[0], stats.log_history[-1]
    # A fresh LoRA (B = 0) makes the policy equal to its reference: every margin is 0, loss = log 2.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/accuracies"] == 0.0 and last["rewards/accuracies"] == 1.0
    assert last["loss"] < first["loss"]
    assert math.isnan(stats.sft_loss) and 0.0 < stats.ranking_accuracy <= 1.0
    # 3 pairs = 6 sequences, each with the prompt; each response is in 2 of the 3 pairs.
    pair_tokens = 6 * len(ex.prompt_ids) + 2 * sum(map(len, ex.responses_ids))
    assert stats.tokens == 4 * pair_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # the temporary folder is gone
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    model.eval()
    ids = torch.tensor([ex.prompt_ids + ex.responses_ids[2]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_reference_is_the_adapter_as_given_or_the_base(embedded_model_dir, tmp_path, reference):
    """On a trained (non-zero) adapter, 'previous' compares the policy with a copy of itself (first loss
    exactly log 2), 'initial' with the base model (first loss elsewhere)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.reference": reference, "train.beta": 0.5, "train.sft_weight": 0.0}).train
    device = torch.device("cpu")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg, device, torch.float32)
    with torch.no_grad():  # pretend a previous round trained the adapter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    stats = train_round_dpo(
        model, [_example(tok)], cfg, tokenizer=tok, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "a", seed=0,
        device=device, pairs="adjacent", loss_type="sigmoid",
    )
    first = stats.log_history[0]["loss"]
    if reference == "previous":
        assert first == pytest.approx(math.log(2), abs=1e-5)
    else:
        assert abs(first - math.log(2)) > 1e-3
    assert list(model.peft_config) == ["default"]


def test_dpo_carries_the_previous_rounds_adamw_state(embedded_model_dir, tmp_path):
    """With ``train.carry_optimizer`` (the default) round 1 continues round 0's AdamW state, also when
    TRL adds its frozen copy of the previous adapter as the reference."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.reference": "previous", "train.epochs": 2}).train
    device = torch.device("cpu")
    common = dict(tokenizer=tok, pad_token_id=tok.pad_token_id, seed=0, device=device, pairs="adjacent")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg, device, torch.float32)
    train_round_dpo(model, [_example(tok)], cfg, out_dir=tmp_path / "r0", **common)
    first = torch.load(tmp_path / "r0" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in first["state"].values()} == {2.0}
    model = load_trainable_policy(str(embedded_model_dir), tmp_path / "r0", cfg, device, torch.float32)
    train_round_dpo(model, [_example(tok)], cfg, out_dir=tmp_path / "r1", previous_adapter=tmp_path / "r0", **common)
    second = torch.load(tmp_path / "r1" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in second["state"].values()} == {4.0}
    assert len(second["state"]) == len(first["state"])
