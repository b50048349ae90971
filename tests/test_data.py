"""Prompt sources: every row shape, gzip, Hugging Face dataset folders, errors, dedupe, round selection."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cyclealign.data.selection import select_round_prompts
from cyclealign.data.sources import load_prompts
from cyclealign.errors import DataError
from cyclealign.records import PromptRecord

HH = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken..."
HH_PROMPT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke"},
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_each_shape_and_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"prompt": "What is 2+2?"}, "", {"messages": CHAT, "id": "chat-1"}, {"chosen": HH, "rejected": HH, "id": 42}],
    )
    prompts = load_prompts(path)
    assert prompts == [
        PromptRecord(id="mixed:1", messages=[{"role": "user", "content": "What is 2+2?"}]),
        PromptRecord(id="chat-1", messages=CHAT),
        PromptRecord(id="42", messages=HH_PROMPT),
    ]


def test_gzip_file_and_stem(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": HH, "rejected": HH}) + "\n\n" + json.dumps({"prompt": "Hello"}) + "\n")
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["pairs:1", "pairs:3"]
    assert prompts[0].messages == HH_PROMPT


def test_duplicates_dropped_keeping_first(tmp_path: Path) -> None:
    short = "\n\nHuman: Hi there\n\nAssistant: Hey"
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"chosen": HH, "rejected": HH}, {"prompt": "Hi there"}, {"chosen": short, "rejected": short}, {"messages": HH_PROMPT}],
    )
    assert [p.id for p in load_prompts(path)] == ["d:1", "d:2"]


def test_hh_merges_repeated_speaker_and_keeps_inline_markers(tmp_path: Path) -> None:
    text = "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c Human: d\n\nHuman: e\n\nAssistant: f"
    [p] = load_prompts(write_jsonl(tmp_path / "h.jsonl", [{"chosen": text, "rejected": text}]))
    assert p.messages == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\n\nc Human: d"},
        {"role": "user", "content": "e"},
    ]


def test_saved_dataset_dir(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "one"}, {"prompt": "two"}]).save_to_disk(str(tmp_path / "saved"))
    prompts = load_prompts(tmp_path / "saved")
    assert [(p.id, p.messages[0]["content"]) for p in prompts] == [("saved:0", "one"), ("saved:1", "two")]


def test_saved_dataset_dict_prefers_test_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"chosen": HH, "rejected": HH}, {"chosen": HH + "!", "rejected": HH}]),
        test=datasets.Dataset.from_list([{"messages": CHAT}]),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [p.messages for p in load_prompts(tmp_path / "dd")] == [CHAT]
    datasets.DatasetDict(train=dd["train"]).save_to_disk(str(tmp_path / "only_train"))
    assert [p.messages for p in load_prompts(tmp_path / "only_train")] == [HH_PROMPT]


def test_folder_of_data_files(tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    # mixed shapes in one folder: datasets fills the missing columns with None
    write_jsonl(folder / "part.jsonl", [{"prompt": "p1"}, {"messages": CHAT}, {"chosen": HH, "rejected": HH}])
    prompts = load_prompts(folder)
    assert [p.id for p in prompts] == ["raw:0", "raw:1", "raw:2"]
    assert [p.messages for p in prompts] == [[{"role": "user", "content": "p1"}], CHAT, HH_PROMPT]


def test_dataset_row_error_names_dir_and_row(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "ok"}, {"prompt": "  "}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad: row 1: \"prompt\" is empty"):
        load_prompts(tmp_path / "bad")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ({"text": "hi"}, 'no recognised field .*"prompt".*"messages".*"chosen"'),
        ({"prompt": 3}, '"prompt" must be a string, got int'),
        ({"prompt": "   "}, '"prompt" is empty'),
        ({"prompt": "hi", "id": 1.5}, '"id" must be a string or an integer'),
        ({"messages": "hi"}, '"messages" must be a non-empty list'),
        ({"messages": [{"role": "user", "content": 5}]}, 'message 0 "content" must be a string'),
        ({"messages": [{"role": "user", "content": ""}]}, "message 0 has empty content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "message 0 has role 'robot'"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "last message must be from the user"),
        ({"chosen": "\n\nAssistant: hi", "rejected": ""}, 'no "Human:" turn'),
        ({"chosen": "\n\nHuman: hi", "rejected": ""}, 'no "Assistant:" turn'),
        ({"chosen": "just text", "rejected": ""}, 'no "Human:" or "Assistant:" turn'),
        ({"chosen": ["x"], "rejected": ""}, '"chosen" must be a string'),
    ],
)
def test_line_errors_name_file_and_line(tmp_path: Path, line: object, message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, "", line])
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{message}") as info:
        load_prompts(path)
    assert info.value.line == 3 and str(path) in str(info.value)


def test_duplicate_id_with_different_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ids.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    with pytest.raises(DataError, match=r"ids\.jsonl:2: id 'x' is already used by line 1"):
        load_prompts(path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: no such file or directory"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.csv").write_text("prompt\nhi\n")
    with pytest.raises(DataError, match=r"p\.csv: unsupported file type; expected \.jsonl or \.jsonl\.gz"):
        load_prompts(tmp_path / "p.csv")
    with pytest.raises(DataError, match=r"empty\.jsonl: no prompts found"):
        load_prompts(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    (tmp_path / "broken.jsonl.gz").write_text("not gzip")
    with pytest.raises(DataError, match="not a valid gzip file"):
        load_prompts(tmp_path / "broken.jsonl.gz")


def _records(n: int) -> list[PromptRecord]:
    return [PromptRecord(id=f"p{i}", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def test_select_round_prompts_disjoint_then_wraps() -> None:
    prompts = _records(10)
    rounds = [select_round_prompts(prompts, r, per_round=3, seed=7) for r in range(4)]
    first_three = [p.id for r in rounds[:3] for p in r]
    assert len(set(first_three)) == 9  # disjoint while prompts last
    assert all(len(r) == 3 and len({p.id for p in r}) == 3 for r in rounds)
    # round 3 takes the 10th prompt, then wraps to the start of the same shuffled order
    assert [p.id for p in rounds[3]] == [*(set(p.id for p in prompts) - set(first_three)), first_three[0], first_three[1]]
    # a full cycle later the same prompts come back
    assert select_round_prompts(prompts, 10, per_round=3, seed=7) == select_round_prompts(prompts, 0, per_round=3, seed=7)


def test_select_round_prompts_deterministic_and_seeded() -> None:
    prompts = _records(50)
    a = select_round_prompts(prompts, 2, per_round=8, seed=1)
    assert a == select_round_prompts(list(prompts), 2, per_round=8, seed=1)
    assert a != select_round_prompts(prompts, 2, per_round=8, seed=2)


def test_select_round_prompts_more_than_available() -> None:
    prompts = _records(4)
    got = select_round_prompts(prompts, 3, per_round=10, seed=0)
    assert sorted(p.id for p in got) == ["p0", "p1", "p2", "p3"]
    with pytest.raises(ValueError):
        select_round_prompts([], 0, per_round=1, seed=0)
    with pytest.raises(ValueError):
        select_round_prompts(prompts, -1, per_round=1, seed=0)


def test_default_prompt_set() -> None:
    prompts = load_prompts(None)
    assert len(prompts) == 48
    assert [p.id for p in prompts] == [f"default-{i:03d}" for i in range(1, 49)]
    assert all(len(p.messages) == 1 and len(p.messages[0]["content"].split()) < 40 for p in prompts)


def test_real_hh_rlhf_file(hh_rlhf_path: Path) -> None:
    prompts = load_prompts(hh_rlhf_path)
    # 2,312 lines; lines 1453 and 1484 repeat the prompts of lines 1263 and 251
    assert len(prompts) == 2310
    assert all(p.messages[-1]["role"] == "user" for p in prompts)
    assert all(m["content"] and m["content"] == m["content"].strip() for p in prompts for m in p.messages)
    first = prompts[0]
    assert first.id == "harmless-base-test:1"
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert first.messages[1]["content"] == "Are you looking for practical joke ideas?"
    multi_turn = [p for p in prompts if any(m["role"] == "assistant" for m in p.messages)]
    assert len(multi_turn) > 1000
    for p in multi_turn:
        assert [m["role"] for m in p.messages] == ["user", "assistant"] * (len(p.messages) // 2) + ["user"]
