"""``cyclealign templates render``: the exact chat messages of one ranker or judge call.

A ranker call is rebuilt as :meth:`cyclealign.round.Round.rank` builds it: the round's
generation of one prompt, the static demonstrations (``ranker.demos_path`` or the shipped ones)
followed by the dynamic ones of the pool the previous round left (:func:`~cyclealign.demos.read_pool`,
:func:`~cyclealign.demos.round_demonstrations`), the shuffle seed
(:func:`~cyclealign.ranker.ranking.round_shuffle_seed`), and then
the messages come from :func:`~cyclealign.ranker.ranking.first_ask_messages`, the function the
ranker itself sends. Without a run, the first shipped demonstration is the query, with the
default settings (what round 0 of a default run would send for it).

A judge call shows the prompt with the generation's first two responses as ``[1]`` and ``[2]``
(evaluation judges each pair in both orders; this is the first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cyclealign.config import Config
from cyclealign.config.ranker import structured_at_start
from cyclealign.demos import DemoPool, read_pool, round_demonstrations, static_demonstrations
from cyclealign.errors import RunDirError
from cyclealign.ranker.ranking import RankJob, first_ask_messages, round_shuffle_seed
from cyclealign.records import Message, PromptRecord
from cyclealign.templates.judge import JudgeTemplates
from cyclealign.templates.ranker import RankerTemplates

__all__ = ["Call", "judge_messages", "ranker_messages", "run_call", "sample_call"]

_TURN = re.compile(r"\n\n(?=(?:User|Assistant|System): )")


@dataclass(frozen=True)
class Call:
    """What one call is rendered from: the settings in force and the job.

    Attributes:
        cfg: the run's config (or the defaults, without a run).
        job: the prompt, its responses (generation order), demonstrations and shuffle seed.
    """

    cfg: Config
    job: RankJob


def _prompt_of(query: str, prompt_id: str) -> PromptRecord:
    """A prompt whose :attr:`~PromptRecord.query_text` is ``query`` (``"User: ...\\n\\nAssistant: ..."``)."""
    messages: list[Message] = []
    for turn in _TURN.split(query):
        role, sep, content = turn.partition(": ")
        if sep and role in ("User", "Assistant", "System"):
            messages.append({"role": role.lower(), "content": content})
        else:
            messages.append({"role": "user", "content": turn})
    return PromptRecord(prompt_id, messages)


def sample_call() -> Call:
    """The call for the first shipped demonstration under the default settings (round 0, seed 0).

    Raises:
        DataError: the shipped demonstrations are unreadable (a broken install).
    """
    cfg = Config()
    first = static_demonstrations(cfg.ranker)[0]  # the defaults': the shipped demonstrations
    prompt = _prompt_of(first.query, "sample")
    demos = round_demonstrations(cfg.ranker, static_demonstrations(cfg.ranker), DemoPool(max_size=cfg.agreement.pool_max_size))
    return Call(cfg, RankJob(prompt, list(first.responses), demos, round_shuffle_seed(cfg.seed, 0)))


def run_call(run_dir: str | Path, round_index: int = 0, prompt_id: str | None = None) -> Call:
    """The ranker call of one prompt of round ``round_index`` of the run in ``run_dir``.

    Args:
        run_dir: the run directory.
        round_index: the round (its ``generations.jsonl`` must exist).
        prompt_id: the prompt (None: the round's first).

    Raises:
        RunDirError: no run there, no generations for the round, an unknown prompt id, a
            prompt with fewer than 2 responses (never sent to the ranker), or the run's prompt
            source lacks the prompt.
        ConfigError, DataError: the run's config, prompt source or demonstrations are invalid.
    """
    from cyclealign.data.sources import load_run_prompts
    from cyclealign.rundir import RunDir

    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    rd = run.round(round_index)
    gens = rd.read_generations()
    if not gens:
        raise RunDirError(f"{rd.generations}: no generations (round {round_index} has not generated)")
    gen = gens[0] if prompt_id is None else next((g for g in gens if g.prompt_id == prompt_id), None)
    if gen is None:
        shown = ", ".join(g.prompt_id for g in gens[:5]) + (", ..." if len(gens) > 5 else "")
        raise RunDirError(f"{rd.generations}: no prompt {prompt_id!r} in round {round_index} (its prompts: {shown})")
    if len(gen.responses) < 2:
        raise RunDirError(f"prompt {gen.prompt_id!r} of round {round_index} has fewer than 2 responses: it is not sent to the ranker")
    prompt = next((p for p in load_run_prompts(run, cfg) if p.id == gen.prompt_id), None)
    if prompt is None:
        raise RunDirError(f"{cfg.prompts}: the run's prompt source has no prompt {gen.prompt_id!r} (of round {round_index})")
    pool = read_pool(run, round_index, cfg.agreement.pool_max_size)  # the pool round_index ranks with
    demos = round_demonstrations(cfg.ranker, static_demonstrations(cfg.ranker), pool)
    return Call(cfg, RankJob(prompt, list(gen.responses), demos, round_shuffle_seed(cfg.seed, round_index)))


def ranker_messages(templates: RankerTemplates, call: Call, sample: int = 0) -> list[Message]:
    """The messages of the first ask of presentation order ``sample`` of ``call`` (before any
    correction re-ask), as the ranker sends them; with ``ranker.structured_output=auto``, as
    long as the endpoint has not refused structured output.

    Raises:
        ValueError: ``sample`` is not in ``0 .. ranker.consistency - 1``.
        TemplateError: a template fails to render.
    """
    r = call.cfg.ranker
    if not 0 <= sample < r.consistency:
        raise ValueError(f"sample {sample} out of range: ranker.consistency={r.consistency} asks orders 0..{r.consistency - 1}")
    _, messages = first_ask_messages(templates, call.job, sample, shuffle=r.shuffle, json_output=structured_at_start(r))
    return messages


def judge_messages(judge: JudgeTemplates, call: Call) -> list[Message]:
    """The messages of a judge call on ``call``'s prompt, its first two responses shown as [1] and [2].

    Raises:
        TemplateError: a judge template fails to render.
    """
    first, second = call.job.responses[:2]
    return judge.messages(call.job.prompt.query_text, first, second)
