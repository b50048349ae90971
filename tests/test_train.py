"""Ranking fine-tuning on the real embedded SmolLM2 model with a LoRA adapter."""

import math

import pytest
import torch

from cyclealign.config import build_config
from cyclealign.train.examples import RankingExample, collate_lists
from cyclealign.train.lora import load_trainable_policy
from cyclealign.train.trainer import train_round

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
    # Pairwise accuracy before each step: at most 1 of the 3 pairs right at first, all 3 at the end.
    assert first["ranking_accuracy"] <= 1 / 3 + 1e-6 and last["ranking_accuracy"] == 1.0
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


def test_collate_aligns_reference_token_logps_with_the_kept_response_tokens():
    ex = {"prompt_ids": [1, 2], "responses_ids": [[4, 5], [6]], "ref_token_logps": [[-1.0, -2.0], [-3.0]]}
    batch = collate_lists([ex], pad_token_id=0, max_length=16)
    assert batch["ref_token_logps"].tolist() == [[0.0, -1.0, -2.0], [0.0, -3.0, 0.0]]  # aligned with response_mask[:, 1:]
    assert batch["ref_logps"].tolist() == [-3.0, -3.0]
    with pytest.raises(ValueError, match="row 1: 2 reference log-probs for 1 kept"):
        collate_lists([{**ex, "ref_token_logps": [[-1.0, -2.0], [-3.0, -4.0]]}], pad_token_id=0, max_length=16)


def test_kl_anchor_keeps_the_worse_responses_near_the_reference(embedded_model_dir, tmp_path):
    """With the anchor, training still learns the ranking but pushes the worse responses' tokens
    less far below the reference (the initial policy) than without it."""
    from transformers import AutoTokenizer

    from cyclealign.train.scoring import list_logps

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reply with one word."}], add_generation_prompt=True, return_dict=False)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("Sure.", "Okay then.", "Certainly, my friend.")]
    row = {"prompt_ids": prompt, "responses_ids": resp}
    device = torch.device("cpu")
    drops, stats_by = {}, {}
    for weight in (0.0, 1.0):
        cfg = build_config(**{"train.learning_rate": 1e-3, "train.epochs": 4, "train.sft_weight": 0.0, "train.kl_weight": weight}).train
        model = load_trainable_policy(str(embedded_model_dir), None, cfg, device, torch.float32)
        (before, lens), = list_logps(model, [row], pad_token_id=tok.pad_token_id, max_length=512, device=device)
        stats = train_round(model, [RankingExample(prompt, resp)], cfg, pad_token_id=tok.pad_token_id, out_dir=tmp_path / f"kl{weight}", seed=0, device=device)
        (after, _), = list_logps(model, [row], pad_token_id=tok.pad_token_id, max_length=512, device=device)
        drops[weight] = [(b - a) / n for a, b, n in zip(after, before, lens)]  # nats per token below the reference
        stats_by[weight] = stats
    anchored = stats_by[1.0].log_history
    assert anchored[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # a fresh LoRA is the reference
    assert anchored[-1]["kl"] > 0 and "kl" not in stats_by[0.0].log_history[0]
    assert anchored[-1]["ranking_loss"] < anchored[0]["ranking_loss"]  # it still learns the ranking
    assert drops[1.0][-1] < drops[0.0][-1]  # the worst response falls less far
    assert max(drops[1.0][1:]) < max(drops[0.0][1:])


def test_kl_weight_is_refused_with_the_pairwise_dpo_trainer():
    from cyclealign.errors import ConfigError

    with pytest.raises(ConfigError, match="kl_weight is for the listwise losses"):
        build_config(**{"train.loss": "dpo", "train.kl_weight": 0.1})


def test_reference_previous_vs_initial(embedded_model_dir):
    from transformers import AutoTokenizer

    from cyclealign.train.scoring import reference_logps

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

    from cyclealign.models.logprobs import response_logprobs
    from cyclealign.train.examples import collate_lists

    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    b = collate_lists([row], tok.pad_token_id, 512)
    with torch.no_grad():
        want = response_logprobs(base, b["input_ids"], b["attention_mask"], b["response_mask"])  # [2, T-1]
    keep = b["response_mask"][:, 1:].bool()
    for k in range(2):  # per token, in order, as training keeps them
        assert torch.allclose(torch.tensor(initial[0][k]), want[k][keep[k]], atol=1e-4)


HELD_IN = ["How do I water a cactus?", "What is a good name for a cat?", "How long should I nap?", "Which fruit has the most fiber?",
           "How can I learn to juggle?", "What should I cook tonight?", "How do I clean a keyboard?", "Why do leaves change color?"]
HELD_OUT = ["How do I fold a shirt?", "What is a fun weekend hobby?", "How can I stay focused?", "Which tea helps me relax?",
            "How do I start running?", "What book should I read next?", "How do I fix a squeaky door?", "Why is the ocean salty?"]
# Label order, best first: a terse "Answer:" format the base model finds unlikely, then the rest.
STYLES = ["Answer: {x}", "{x} (end of answer)", "{x}", "Certainly, happy to help! {x}"]
ANSWER = "It depends on a few details, so start small and adjust."


def _style_rows(tok, questions):
    rows = []
    for q in questions:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False)
        resp = [tok(s.format(x=ANSWER), add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s in STYLES]
        rows.append({"prompt_ids": list(prompt), "responses_ids": resp})
    return rows


def _mean_tau(model, tok, rows):
    from cyclealign.agreement import kendall_tau, ranking_from_scores
    from cyclealign.train.scoring import list_logps

    taus = []
    for sums, lens in list_logps(model, rows, pad_token_id=tok.pad_token_id, max_length=512, device=torch.device("cpu")):
        taus.append(kendall_tau(list(range(len(sums))), ranking_from_scores([s / n for s, n in zip(sums, lens)])))
    return sum(taus) / len(taus)


def test_pro_training_generalises_a_style_preference_to_held_out_prompts(embedded_model_dir, tmp_path):
    """Trained on 8 prompts whose rankings prefer one style, the policy's own log-likelihood
    ranking agrees with that preference more on 8 held-out prompts (mean Kendall tau)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.learning_rate": 5e-4, "train.epochs": 2, "train.sft_weight": 0.0})
    device = torch.device("cpu")
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, device, torch.float32)
    train_rows, eval_rows = _style_rows(tok, HELD_IN), _style_rows(tok, HELD_OUT)
    before = _mean_tau(model, tok, eval_rows)
    examples = [RankingExample(r["prompt_ids"], r["responses_ids"]) for r in train_rows]
    train_round(model, examples, cfg.train, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "a", seed=0, device=device)
    after = _mean_tau(model, tok, eval_rows)
    print(f"held-out mean Kendall tau vs label: before={before:.3f} after={after:.3f}")
    assert after > before + 0.2, (before, after)


def test_save_merged_gives_a_plain_checkpoint_equal_to_the_adapter_policy(embedded_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from cyclealign.train.lora import save_merged

    cfg = build_config().train
    model = load_trainable_policy(str(embedded_model_dir), None, cfg, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.02)
    ids = torch.tensor([[1, 9690, 198, 2683, 359]])
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
    out = save_merged(model, str(embedded_model_dir), tmp_path / "merged")
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, want, atol=1e-3)


def test_qlora_without_cuda_is_a_clear_config_error(embedded_model_dir):
    from cyclealign.errors import ConfigError

    cfg = build_config(**{"train.qlora": True}).train
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/test_cuda.py covers QLoRA")
    with pytest.raises(ConfigError, match=r"train.qlora \(--qlora\) needs a CUDA device"):
        load_trainable_policy(str(embedded_model_dir), None, cfg, torch.device("cpu"), torch.float32)


def test_carry_optimizer_continues_the_previous_rounds_adamw_state(embedded_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    cfg = build_config(**{"train.epochs": 1})
    assert cfg.train.carry_optimizer  # the default
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_dict=False)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("Hi!", "Hello there.", "no")]
    examples = [RankingExample(prompt, resp)] * 2
    device = torch.device("cpu")
    common = dict(pad_token_id=tok.pad_token_id, seed=0, device=device)
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, device, torch.float32)
    train_round(model, examples, cfg.train, out_dir=tmp_path / "r0", **common)
    first = torch.load(tmp_path / "r0" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in first["state"].values()} == {2.0}
    model = load_trainable_policy(str(embedded_model_dir), tmp_path / "r0", cfg.train, device, torch.float32)
    train_round(model, examples, cfg.train, out_dir=tmp_path / "r1", previous_adapter=tmp_path / "r0", **common)
    second = torch.load(tmp_path / "r1" / "optimizer.pt", weights_only=True)
    # Adam's step count went on from round 0's (2 + 2), so the moment estimates carried over.
    assert {float(s["step"]) for s in second["state"].values()} == {4.0}
    assert len(second["state"]) == len(first["state"])
    # Without the option no state is written.
    cfg_off = build_config(**{"train.epochs": 1, "train.carry_optimizer": False})
    model = load_trainable_policy(str(embedded_model_dir), None, cfg_off.train, device, torch.float32)
    train_round(model, examples, cfg_off.train, out_dir=tmp_path / "off", **common)
    assert not (tmp_path / "off" / "optimizer.pt").exists()


def test_a_sharded_optimizer_state_is_neither_saved_nor_loaded(tmp_path, caplog):
    """Under DeepSpeed ZeRO / FSDP one process's ``state_dict()`` is a shard: the round starts fresh."""
    from types import SimpleNamespace

    from cyclealign.train.optimizer_carry import optimizer_state_is_whole, save_optimizer_state

    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    plain = SimpleNamespace(optimizer=opt, is_deepspeed_enabled=False, is_fsdp_enabled=False)
    assert optimizer_state_is_whole(plain) and save_optimizer_state(plain, tmp_path)
    assert (tmp_path / "optimizer.pt").is_file()
    for flags in ({"is_deepspeed_enabled": True}, {"is_fsdp_enabled": True}):
        folder = tmp_path / next(iter(flags))
        folder.mkdir()
        sharded = SimpleNamespace(optimizer=opt, **{"is_deepspeed_enabled": False, "is_fsdp_enabled": False, **flags})
        assert not optimizer_state_is_whole(sharded)
        assert not save_optimizer_state(sharded, folder)
        assert not (folder / "optimizer.pt").exists()
    assert "sharded" in caplog.text

    # Loading: the mixin fills a new optimiser from the file only when the state is whole.
    from cyclealign.train.optimizer_carry import CarriedOptimizerMixin

    class Fresh:
        def create_optimizer(self):
            return torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)

    class Trainer(CarriedOptimizerMixin, Fresh):
        is_fsdp_enabled = False

        def __init__(self, deepspeed: bool):
            self.is_deepspeed_enabled = deepspeed
            self.carried_optimizer_state = tmp_path / "optimizer.pt"

    loaded = Trainer(deepspeed=False).create_optimizer()
    assert [float(s["step"]) for s in loaded.state_dict()["state"].values()] == [1.0]
    assert Trainer(deepspeed=True).create_optimizer().state_dict()["state"] == {}
    assert "not loaded" in caplog.text


def test_max_grad_norm_reaches_the_trainer(embedded_model_dir, tmp_path):
    """``train.max_grad_norm`` is the trainer's clipping threshold; 0 turns clipping off and the
    pre-clip norm is still logged."""
    from transformers import AutoTokenizer

    from cyclealign.train.session import training_arguments

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    device = torch.device("cpu")
    assert training_arguments(build_config().train, work=tmp_path, seed=0, device=device)["max_grad_norm"] == 5.0
    cfg = build_config(**{"train.max_grad_norm": 0, "train.epochs": 1, "train.carry_optimizer": False})
    assert training_arguments(cfg.train, work=tmp_path, seed=0, device=device)["max_grad_norm"] == 0.0
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_dict=False)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in ("Hi!", "no")]
    model = load_trainable_policy(str(embedded_model_dir), None, cfg.train, device, torch.float32)
    stats = train_round(model, [RankingExample(prompt, resp)], cfg.train, pad_token_id=tok.pad_token_id, seed=0,
                        device=device, out_dir=tmp_path / "a")
    assert stats.steps == 1 and math.isfinite(stats.grad_norm) and stats.grad_norm > 0
