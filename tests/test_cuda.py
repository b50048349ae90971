"""CUDA code path: one bf16 training step of the ranking loss. Runs only where CUDA is present."""

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.train.examples import RankingExample
from cyclealign.train.trainer import train_round

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the bf16 GPU training step needs one (run on a GPU machine)"
)


@pytest.mark.parametrize("loss", ["pro", "dpo-pl"])
def test_bf16_ranking_step_on_cuda(tmp_path, loss):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from cyclealign.train.lora import lora_config

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg = build_config(**{"train.loss": loss, "model.device": "cuda", "train.epochs": 1})
    device = torch.device("cuda")
    base = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    model = get_peft_model(base, lora_config(cfg.train))
    examples = [RankingExample([5, 6, 7, 8], [[10, 11, 2], [12, 2], [13, 14, 15, 2]])] * 2
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    stats = train_round(model, examples, cfg.train, pad_token_id=0, out_dir=tmp_path / "adapter", seed=0, device=device)
    assert stats.steps == 2 and stats.train_loss == stats.train_loss  # finite, not NaN
    assert next(model.parameters()).device.type == "cuda"
    assert any(not torch.equal(p.detach().float(), before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_step_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    from cyclealign.models.tokenizer import load_tokenizer
    from cyclealign.train.lora import load_trainable_policy
    from tiny_model import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    cfg = build_config(**{"train.qlora": True, "model.device": "cuda", "train.epochs": 1})
    device = torch.device("cuda")
    model = load_trainable_policy(str(model_dir), None, cfg.train, device, torch.bfloat16)
    tok = load_tokenizer(str(model_dir))
    ex = [RankingExample([1, 20, 30], [[40, 41, tok.eos_token_id], [50, tok.eos_token_id]])]
    stats = train_round(model, ex, cfg.train, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "a", seed=0, device=device)
    assert stats.steps == 1 and (tmp_path / "a" / "adapter_config.json").is_file()
