"""The backend-independent half of the policy (SamplingPolicy: encode, decode, de-duplicate,
resample), the backend factory and the loop's close-before-train, with a pure-Python fake backend."""

import json
import sys
import types

import pytest

from cyclealign.config import build_config
from cyclealign.errors import ConfigError
from cyclealign.policy import make_policy
from cyclealign.policy.base import SamplingPolicy, derive_seed
from cyclealign.policy.hf import TransformersPolicy
from cyclealign.records import PromptRecord, Sample

EOS = 99


class FakeTokenizer:
    """Token ids are ints; token t decodes as ``w<t>``; EOS (99) is a special token."""

    pad_token_id = 0
    eos_token_id = EOS

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict):
        assert add_generation_prompt and tokenize and not return_dict
        return [7, *(ord(c) for c in messages[-1]["content"]), 8]

    def decode(self, ids, skip_special_tokens=False):
        words = [f"w{t}" for t in ids if not (skip_special_tokens and t == EOS)]
        return "  " + " ".join(words) + " \n"  # the policy strips the whitespace


class FakePolicy(SamplingPolicy):
    """Answers each prompt (by its text) with the next scripted pass of token-id responses.

    ``script[text]`` is a list of passes, each a list of n responses (token-id lists; a response
    ending with EOS is finished, and its logprob_mean is ``-len(ids)``)."""

    def __init__(self, gen_cfg, script=None):  # no model_dir: no tokenizer to load
        self.gen_cfg, self.tokenizer, self.model_dir = gen_cfg, FakeTokenizer(), "fake"
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls, self.events, self.is_open, self.adapter = [], [], False, None

    def _text(self, ids):
        return "".join(chr(t) for t in ids[1:-1])

    def sample_batch(self, prompt_ids, *, n, seed, temperature, top_p, max_new_tokens):
        self.is_open = True
        self.calls.append({"prompts": [self._text(p) for p in prompt_ids], "n": n, "seed": seed,
                           "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens})
        out = []
        for p in prompt_ids:
            passes = self.script.get(self._text(p))
            responses = passes.pop(0) if passes else [[1, 2, EOS]] * n  # script used up: duplicates only
            assert len(responses) == n
            out.append([Sample(ids[:max_new_tokens], -float(len(ids)), ids[-1] == EOS) for ids in responses])
        return out

    def load_adapter(self, path):
        self.events.append(("load_adapter", path))
        self.adapter, self.is_open = path, True

    def close(self):
        self.events.append(("close", self.is_open))
        self.is_open = False


def prompt(pid, text):
    return PromptRecord(pid, [{"role": "user", "content": text}])


def gen_cfg(**kw):
    return build_config(**{f"generation.{k}": v for k, v in kw.items()}).generation


def test_duplicates_are_resampled_with_new_seeds_and_first_come_order_is_kept():
    cfg = gen_cfg(num_samples=3, batch_size=2, max_resample=2, temperature=0.7, top_p=0.9, max_new_tokens=5)
    policy = FakePolicy(cfg, {
        "a": [[[1, EOS], [1, EOS], [2, 3]], [[4, EOS], [1, EOS], [5, EOS]]],  # one duplicate, then the first new one
        "b": [[[6, EOS], [7, EOS], [8]]],  # distinct at once
        "c": [[[9], [9], [9]], [[9], [10], [9]], [[11], [10], [12]]],  # two resampling passes
    })
    progress, final = [], []
    gens = policy.sample(
        [prompt("A", "a"), prompt("B", "b"), prompt("C", "c")], seed=5, progress=progress.append,
        on_generation=lambda g: final.append((g.prompt_id, len(policy.calls), len(g.responses))),
    )
    assert [g.prompt_id for g in gens] == ["A", "B", "C"]
    # each prompt is handed over once, when its responses are final: B after the first batch,
    # A after the pass that completed it, C after the last pass
    assert final == [("B", 1, 3), ("A", 3, 3), ("C", 4, 3)]
    a, b, c = gens
    assert a.responses == ["w1", "w2 w3", "w4"] and a.response_token_ids == [[1, EOS], [2, 3], [4, EOS]]
    assert a.logprob_mean == [-2.0, -2.0, -2.0] and a.finished == [True, False, True]
    assert b.responses == ["w6", "w7", "w8"] and b.finished == [True, True, False]
    assert c.responses == ["w9", "w10", "w11"] and c.logprob_mean == [-1.0] * 3
    assert a.prompt_token_ids == [7, ord("a"), 8]
    # Pass 0: batches [a, b] and [c]; pass 1: only the prompts still short, [a, c]; pass 2: [c].
    assert [call["prompts"] for call in policy.calls] == [["a", "b"], ["c"], ["a", "c"], ["c"]]
    seeds = [call["seed"] for call in policy.calls]
    assert seeds == [derive_seed(5, 0, 0), derive_seed(5, 0, 1), derive_seed(5, 1, 0), derive_seed(5, 2, 0)]
    assert len(set(seeds)) == 4
    assert {(c["n"], c["temperature"], c["top_p"], c["max_new_tokens"]) for c in policy.calls} == {(3, 0.7, 0.9, 5)}
    assert progress == [2, 1]  # first-pass batches only


def test_resampling_stops_after_max_resample_extra_passes():
    cfg = gen_cfg(num_samples=4, batch_size=8, max_resample=2)
    policy = FakePolicy(cfg)  # every pass: four copies of one response
    final = []
    [g] = policy.sample([prompt("A", "a")], seed=0, on_generation=final.append)
    assert g.responses == ["w1 w2"] and g.finished == [True] and final == [g]  # handed over short, after the last pass
    assert len(policy.calls) == 3
    none = FakePolicy(gen_cfg(num_samples=4, max_resample=0))
    none.sample([prompt("A", "a")], seed=0)
    assert len(none.calls) == 1


def test_seeds_follow_the_call_seed():
    cfg = gen_cfg(num_samples=2, max_resample=1)
    runs = []
    for seed in (3, 3, 4):
        policy = FakePolicy(cfg)
        policy.sample([prompt("A", "a")], seed=seed)
        runs.append([c["seed"] for c in policy.calls])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert all(0 <= s < 2**31 for s in runs[0])


def test_greedy_is_one_unseeded_argmax_response_per_prompt_in_batches():
    policy = FakePolicy(gen_cfg(batch_size=2, max_new_tokens=6), {
        "a": [[[3, EOS]]], "b": [[[EOS]]], "c": [[[4, 5, 6]]],
    })
    progress = []
    gens = policy.greedy([prompt("A", "a"), prompt("B", "b"), prompt("C", "c")], max_new_tokens=4, progress=progress.append)
    assert [g.responses for g in gens] == [["w3"], [""], ["w4 w5 w6"]]
    assert [g.finished for g in gens] == [[True], [True], [False]]
    assert [(c["prompts"], c["n"], c["seed"], c["temperature"], c["top_p"], c["max_new_tokens"]) for c in policy.calls] == [
        (["a", "b"], 1, None, 0.0, 1.0, 4), (["c"], 1, None, 0.0, 1.0, 4)
    ]
    assert progress == [2, 1]


def test_a_backend_must_implement_the_batch_sampler_adapter_and_close():
    class Partial(SamplingPolicy):
        def sample_batch(self, prompt_ids, *, n, seed, temperature, top_p, max_new_tokens):
            return []

    with pytest.raises(TypeError, match="close"):
        Partial("unused", gen_cfg())


def test_make_policy_names_the_backend(embedded_model_dir, monkeypatch):
    policy = make_policy(build_config(), str(embedded_model_dir))
    assert isinstance(policy, TransformersPolicy)
    assert policy._model is None  # loaded on first use
    # vllm: imported only when chosen (the module is stubbed here)
    made = []
    stub = types.ModuleType("cyclealign.policy.vllm")
    stub.VLLMPolicy = lambda cfg, model_dir, api_key=None: made.append((cfg, model_dir, api_key)) or "vllm-policy"
    monkeypatch.setitem(sys.modules, "cyclealign.policy.vllm", stub)
    cfg = build_config(**{"generation.backend": "vllm"})
    assert make_policy(cfg, "some/model") == "vllm-policy" and made == [(cfg, "some/model", None)]
    # the policy server's key comes from the environment the CLI read, by the variable vllm.api_key_env names
    keyed = build_config(**{"generation.backend": "vllm", "vllm.api_key_env": "POLICY_KEY"})
    make_policy(keyed, "m", {"POLICY_KEY": "k-1", "VLLM_API_KEY": "other"})
    assert made[-1] == (keyed, "m", "k-1")


def test_vllm_section_and_the_lora_rank_cross_check():
    cfg = build_config()
    assert cfg.generation.backend == "transformers" and cfg.vllm.base_url is None
    # the server's rank slot fits the trained adapter exactly: vLLM pads every adapter to it
    assert (cfg.vllm.gpu_memory_utilization, cfg.vllm.max_lora_rank, cfg.vllm.max_loras) == (0.35, 16, 2)
    assert build_config(**{"generation.backend": "vllm", "train.lora_r": 24}).vllm.max_lora_rank == 32
    build_config(**{"train.lora_r": 128, "vllm.max_lora_rank": 64})  # the transformers backend has no rank limit
    with pytest.raises(ConfigError, match=r"vllm\.max_lora_rank=64 is below train\.lora_r=128"):
        build_config(**{"generation.backend": "vllm", "train.lora_r": 128, "vllm.max_lora_rank": 64})
    assert build_config(**{"generation.backend": "vllm", "train.lora_r": 128, "vllm.max_lora_rank": 128}).vllm.max_lora_rank == 128
    with pytest.raises(ConfigError, match=r"vllm\.gpu_memory_utilization"):
        build_config(**{"vllm.gpu_memory_utilization": 1.5})
    with pytest.raises(ConfigError, match=r"vllm\.max_lora_rank"):  # vLLM's --max-lora-rank takes only its sizes
        build_config(**{"vllm.max_lora_rank": 24})
    with pytest.raises(ConfigError, match=r"generation\.backend"):
        build_config(**{"generation.backend": "sglang"})


def test_serving_fields_may_change_on_resume_but_not_the_backend():
    from cyclealign.config import RESUMABLE_CHANGES

    assert {"vllm.base_url", "vllm.port", "vllm.gpu_memory_utilization", "vllm.request_concurrency"} <= RESUMABLE_CHANGES
    assert "generation.backend" not in RESUMABLE_CHANGES and "vllm.extra_args" not in RESUMABLE_CHANGES


def test_the_loop_closes_the_policy_before_each_train_phase_and_at_exit(tmp_path, prompts_file, monkeypatch):
    import cyclealign.loop
    import cyclealign.train.phase
    from scripted_api import ScriptedAPI
    from scripted_run import reverse_ranker

    made = []

    def fake_make_policy(cfg, model_dir, environ=None):
        made.append(FakePolicy(cfg.generation, {}))
        return made[-1]

    trained = []

    def fake_train(cfg, run, index, **kw):
        trained.append((index, made[0].is_open))
        return {"adapter": False, "skipped": "test"}

    monkeypatch.setattr(cyclealign.loop, "make_policy", fake_make_policy)
    monkeypatch.setattr(cyclealign.train.phase, "run_train_phase", fake_train)
    with ScriptedAPI(fallback=reverse_ranker) as api:
        cfg = build_config(**{
            "run_dir": tmp_path / "run", "prompts": prompts_file, "rounds": 2, "prompts_per_round": 2,
            "generation.num_samples": 2, "ranker.base_url": api.base_url, "ranker.model": "scripted",
            "ranker.cache_path": tmp_path / "cache.sqlite",
        })
        cyclealign.loop.iterate(cfg, environ={"OPENAI_API_KEY": "sk-x"})
    assert len(made) == 1  # one backend for the run, reopened by each generate
    assert trained == [(0, False), (1, False)]
    assert made[0].events == [
        ("load_adapter", None), ("close", True),  # round 0: generate, close before train
        ("load_adapter", None), ("close", True),  # round 1 (round 0 trained no adapter)
        ("close", False),  # at exit
    ]


def test_the_vllm_launcher_leaves_the_users_environment_and_keeps_the_key_off_the_command_line(tmp_path, monkeypatch):
    from cyclealign.policy.vllm_client import VLLMServer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = build_config(**{"generation.backend": "vllm", "vllm.command": ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]})
    srv = VLLMServer(cfg.vllm, "org/model", log_path=tmp_path / "log", api_key="sk-secret")
    env, cmd = srv.environment(), srv.command(8000)
    assert "HF_HUB_OFFLINE" not in env and env["HF_HOME"] == str(tmp_path / "hf")  # a hub id can still be fetched
    assert env["VLLM_API_KEY"] == "sk-secret" and not any("sk-secret" in part for part in cmd)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert cmd[:5] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16" and "--enable-sleep-mode" in cmd
    serve = build_config(**{"vllm.command": "/opt/vllm/bin/vllm serve"}).vllm  # vllm serve takes the model positionally
    assert VLLMServer(serve, "org/model", log_path=tmp_path / "log").command(8000)[:3] == ["/opt/vllm/bin/vllm", "serve", "org/model"]
    no_sleep = VLLMServer(cfg.vllm, "org/model", log_path=tmp_path / "log", sleep_mode=False)
    assert "--enable-sleep-mode" not in no_sleep.command(8000) and "VLLM_API_KEY" not in no_sleep.environment()


def test_generation_batches_are_journalled_with_their_stream_and_a_resume_draws_the_same(tmp_path):
    """A backend drawing from one stream seeded per call (as the transformers backend does):
    each batch is journalled with the stream state it left; a resume skips the journalled
    batches, continues the stream where the last of them left it, and draws what an
    uninterrupted call drew."""
    import random

    from cyclealign.rundir import GenerationJournal

    calls = []

    class Streamed(FakePolicy):
        def begin_sampling(self, seed):
            self.rng = random.Random(seed)

        def stream_state(self):
            return json.dumps(self.rng.getstate())

        def restore_stream(self, state):
            version, internal, gauss = json.loads(state)
            self.rng.setstate((version, tuple(internal), gauss))

        def sample_batch(self, prompt_ids, *, n, seed, temperature, top_p, max_new_tokens):
            calls.append(seed)
            return [[Sample([1, self.rng.randrange(3, 1000), EOS], -1.0, True) for _ in range(n)] for _ in prompt_ids]

    def sample(path):
        policy = Streamed(gen_cfg(batch_size=2, max_resample=0), {})
        return [g.to_json() for g in policy.sample(prompts, seed=3, journal=GenerationJournal(path))], policy.rng.random()

    prompts = [PromptRecord(str(i), [{"role": "user", "content": f"q{i}"}]) for i in range(5)]
    path = tmp_path / "generation_batches.jsonl"
    first = sample(path)
    assert len(calls) == 3 and len(GenerationJournal(path)) == 3
    with open(path, "ab") as f:
        f.write(b'{"key": "torn')  # a kill mid-append
    calls.clear()
    assert sample(path) == first and calls == []  # all read back; the stream left as the last batch left it
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1]) + '\n{"key": "torn')  # only the first batch kept, then a torn line
    assert sample(path) == first  # the same draws, and the same stream after the call
    assert len(calls) == 2  # only the other two batches were sampled
    assert len(GenerationJournal(path)) == 3 and path.read_bytes().endswith(b"\n")  # the torn tail was cut before appending
    other = Streamed(gen_cfg(batch_size=2, max_resample=0), {}).sample(prompts, seed=4, journal=GenerationJournal(tmp_path / "o.jsonl"))
    assert [g.to_json() for g in other] != first[0]  # (the draws do depend on the stream: another seed, other draws)
