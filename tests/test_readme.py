"""The README is a user's document: it names no machine or development round, every
``cyclealign`` command it shows uses options the command has (and shows no deprecated
spelling), and the blocks marked ``<!-- readme-test: offline -->`` run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cyclealign.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
OFFLINE_MARK = "<!-- readme-test: offline -->"

# What the development of the project leaves in text, and what a user's document never says.
FORBIDDEN = {
    "a path of the machines it was built on": r"\.\./shared|/work/|/root/|/tmp/",
    "a development round": r"\b[Ss]ession \d+|\bissue \d+|\b[Pp]ass \d+\b|\bthis workplace\b|\bthe issue's\b",
    "a commit as a point in history": r"\(?\bbefore \(?[0-9a-f]{7}\b",
    "a figure left to fill in": r"\b[A-Z]+_[A-Z_]*(TABLE|TEXT)\b",
}


def code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """Every fenced block of ``text``: (info string, body, marked offline)."""
    blocks = []
    for m in re.finditer(r"(?ms)^```([^\n]*)\n(.*?)^```", text):
        before = text[: m.start()].rstrip().splitlines()
        blocks.append((m.group(1).strip(), m.group(2), bool(before) and before[-1].strip() == OFFLINE_MARK))
    return blocks


def command_lines(body: str) -> list[str]:
    """The lines of a shell block, continuations joined, comments and blank lines dropped."""
    lines, current = [], ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            lines.append(current.strip())
        current = ""
    return lines


def cyclealign_calls(line: str) -> list[list[str]]:
    """The argument lists of every ``cyclealign`` call on a line (``.venv/bin/cyclealign`` too)."""
    calls = []
    for m in re.finditer(r"(?:^|[\s/])cyclealign\s+(?=[a-z])", line):
        rest = re.split(r"\s(?:&&|\|\||>>|>|\|)\s", line[m.end():])[0]
        words = shlex.split(rest, comments=True)
        calls.append(words)
    return calls


def resolve(words: list[str]):
    """The (typer's click) command a call names, through groups, and the words after its name."""
    cmd = typer.main.get_command(app)
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    return cmd, words


def test_the_readme_names_no_machine_and_no_development_round():
    text = README.read_text()
    for what, pattern in FORBIDDEN.items():
        found = [(text[: m.start()].count("\n") + 1, m.group(0)) for m in re.finditer(pattern, text)]
        assert not found, f"README names {what}: {found}"


def test_every_command_in_the_readme_uses_options_the_command_shows():
    text = README.read_text()
    prose = re.sub(r"(?ms)^```.*?^```", "", text)
    lines = [m.group(1) for m in re.finditer(r"`(cyclealign [^`]+)`", prose)]  # inline, as `cyclealign eval --run-dir RUN_DIR`
    lines += [line for info, body, _ in code_blocks(text) if info in ("bash", "cron", "ini") for line in command_lines(body)]
    seen = 0
    for line in lines:
        for words in cyclealign_calls(line):
            cmd, rest = resolve(words)
            assert not hasattr(cmd, "commands"), f"README: {line!r} names no command of {cmd.name or 'cyclealign'}"
            options = [p for p in cmd.params if p.param_type_name == "option"]
            visible = {o for p in options if not p.hidden for o in p.opts + p.secondary_opts}
            hidden = {o for p in options if p.hidden for o in p.opts + p.secondary_opts}
            for w in rest:
                if w.startswith("--"):
                    flag = w.split("=", 1)[0]
                    assert flag not in hidden, f"README: {line!r} uses the deprecated {flag}"
                    assert flag in visible | {"--help"}, f"README: {line!r}: {cmd.name} has no option {flag}"
            seen += 1
    assert seen >= 40, seen  # the README shows the commands; a parser bug must not pass by finding none


@pytest.mark.slow
def test_the_offline_blocks_run_as_written(tmp_path):
    """The main job, status, report, export, config and the templates commands, in the README's
    order, in a fresh folder: each exits 0."""
    blocks = [body for _, body, offline in code_blocks(README.read_text()) if offline]
    lines = [line for body in blocks for line in command_lines(body)]
    names = {resolve(words)[0].name for line in lines for words in cyclealign_calls(line)}
    assert {"iterate", "status", "report", "export", "show", "fields", "list", "copy", "check", "render"} <= names, names
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"README: {line!r} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, (line, done.stderr[-3000:])
    assert (tmp_path / "runs/embedded/round_001/adapter").is_dir()
    assert (tmp_path / "runs/embedded/report/report.html").is_file()
    assert (tmp_path / "data/dpo").is_dir() and (tmp_path / "my_prompts").is_dir()
