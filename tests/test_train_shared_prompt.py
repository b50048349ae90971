"""The packed training forward (each list's prompt run once) equals the plain ``[N, seq]`` forward:
log-probs, loss and LoRA gradients, on the real model and HH-RLHF prompts."""

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.data.sources import load_prompts
from cyclealign.models.tokenizer import encode_prompt, load_tokenizer
from cyclealign.train.examples import collate_lists
from cyclealign.train.lora import load_trainable_policy
from cyclealign.train.shared_prompt import shared_prompt_length
from packed_grads import loss_and_grads, packed, plain

pytestmark = pytest.mark.slow


def _lists(model_dir, hh_rlhf_path, tok):
    prompts = [p for p in load_prompts(hh_rlhf_path)[:40] if len(p.messages) > 1][:2]  # multi-turn: long prompts
    texts = [["Sure, here is how.", "I can't help with that, sorry.", "No."], ["I'd rather not say.", "Yes!"]]
    rows = []
    for p, responses in zip(prompts, texts):
        ids = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in responses]
        rows.append({"prompt_ids": encode_prompt(tok, p, 384), "responses_ids": ids})
    return rows


@pytest.mark.parametrize("max_length", [512, 40])  # 40: prompts cut per response, so each response is packed on its own
def test_shared_prompt_forward_gives_the_plain_forwards_logprobs_loss_and_lora_gradients(
    embedded_model_dir, hh_rlhf_path, max_length
):
    tok = load_tokenizer(str(embedded_model_dir))
    cfg = build_config()
    torch.manual_seed(0)
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, torch.device("cpu"), torch.float32)
    with torch.no_grad():  # LoRA B starts at zero: give it weight so that every LoRA gradient is non-zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    batch = collate_lists(_lists(embedded_model_dir, hh_rlhf_path, tok), tok.pad_token_id, max_length)
    shared = [
        shared_prompt_length(batch["input_ids"][a:b], batch["attention_mask"][a:b], batch["response_mask"][a:b])
        for a, b in ((0, 3), (3, 5))
    ]
    if max_length == 512:
        assert all(p is not None and p > 40 for p in shared)
    else:
        assert shared == [None, None]

    logp_a, loss_a, grads_a = loss_and_grads(model, batch, plain)
    logp_b, loss_b, grads_b = loss_and_grads(model, batch, packed)
    assert logp_b.shape == logp_a.shape
    assert torch.allclose(logp_b, logp_a, atol=2e-4)
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-4)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    for name, g in grads_a.items():
        assert float(g.abs().max()) > 0, name
        assert torch.allclose(grads_b[name], g, rtol=1e-3, atol=1e-6 + 1e-3 * float(g.abs().max())), name
