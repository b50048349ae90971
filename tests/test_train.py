"""Ranking fine-tuning on the real embedded SmolLM2 model with a LoRA adapter."""

import math

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.train.trainer import RankingExample, collate_lists, load_trainable_policy, train_round

pytestmark = pytest.mark.slow


def test_collate_packs_lists_into_one_batch():
    batch = collate_lists(
        [{"prompt_ids": [1, 2, 3], "responses_ids": [[4, 5], [6]]}, {"prompt_ids": [7], "responses_ids": [[8, 9, 9]]}],
        pad_token_id=0,
        max_length=16,
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 0], [7, 8, 9, 9, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0]]
    assert batch["list_sizes"].tolist() == [2, 1]


def test_training_updates_only_lora_saves_a_peft_adapter_and_learns_the_ranking(embedded_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.learning_rate": 1e-3, "train.epochs": 3, "train.sft_weight": 0.0})
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reply with one word."}], add_generation_prompt=True, return_dict=False)
    good = tok("Certainly.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    mid = tok("Okay then friend.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("zzz qqq xxx", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # Label prefers the response the base model finds least likely first: training must flip it.
    examples = [RankingExample(prompt, [bad, mid, good])] * 4
    device = torch.device("cpu")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, device, torch.float32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = train_round(model, examples, cfg.train, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "adapter", seed=0, device=device)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable
    assert stats.steps == 12 and stats.lists == 12
    first, last = stats.log_history[0], stats.log_history[-1]
    assert last["ranking_loss"] < first["ranking_loss"]
    assert first["ranking_accuracy"] == 0.0 and last["ranking_accuracy"] == 1.0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # The saved adapter loads with plain PEFT and reproduces the trained policy.
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    model.eval()
    ids = torch.tensor([prompt + good])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("loss", ["rrhf", "dpo-pl", "lipo"])
def test_each_ranking_loss_trains_lora_and_lowers_its_loss(embedded_model_dir, tmp_path, loss):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.loss": loss, "train.learning_rate": 1e-3, "train.epochs": 4, "train.sft_weight": 0.0, "train.beta": 0.5})
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reply with one word."}], add_generation_prompt=True, return_dict=False)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("zzz qqq", "Okay then.", "Sure.")]
    device = torch.device("cpu")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, device, torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = train_round(model, [RankingExample(prompt, resp)], cfg.train, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "a", seed=0, device=device)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)
    first, last = stats.log_history[0], stats.log_history[-1]
    assert last["ranking_loss"] < first["ranking_loss"]
    assert first["tokens_per_s"] > 0
    if loss == "dpo-pl":
        # Before the first update the policy equals the reference (fresh LoRA): all rewards are 0,
        # so the Plackett-Luce NLL of any order of 3 is log 3!.
        assert first["ranking_loss"] == pytest.approx(math.log(6), abs=1e-4)


def test_reference_previous_vs_initial(embedded_model_dir):
    from transformers import AutoTokenizer

    from cyclealign.train.trainer import reference_logps

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    row = {"prompt_ids": tok("Hi", add_special_tokens=False)["input_ids"], "responses_ids": [[30, 31, 2], [40, 2]]}
    cfg = build_config(**{"train.loss": "dpo-pl"}).train
    model = load_trainable_policy(str(embedded_model_dir), None, cfg, torch.device("cpu"), torch.float32)
    with torch.no_grad():  # pretend a previous round trained the adapter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    initial = reference_logps(model, [row], cfg, pad_token_id=tok.pad_token_id, device=torch.device("cpu"))
    previous = reference_logps(model, [row], cfg.model_copy(update={"reference": "previous"}), pad_token_id=tok.pad_token_id, device=torch.device("cpu"))
    assert len(initial[0]) == 2 and initial != previous
    from transformers import AutoModelForCausalLM

    from cyclealign.logprobs import response_logprobs
    from cyclealign.train.trainer import collate_lists

    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    b = collate_lists([row], tok.pad_token_id, 512)
    with torch.no_grad():
        want = response_logprobs(base, b["input_ids"], b["attention_mask"], b["response_mask"]).sum(-1)
    assert torch.allclose(torch.tensor(initial[0]), want, atol=1e-4)
