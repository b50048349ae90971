"""Ranking fine-tuning on the real embedded SmolLM2 model with a LoRA adapter."""

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
