"""The package's shape, guarded: no module re-exports another's names, the records and the run
directory stand apart from the policy, ranker and trainer, and the light commands load no heavy
library (torch, transformers, openai). AST reads and one subprocess; no model, no server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cyclealign"
PUBLIC_FACE = {"cyclealign.config"}  # the one documented import surface: Config and its layering
HEAVY = ("torch", "transformers", "openai")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top_level_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """``from cyclealign... import`` statements at module level, ``if TYPE_CHECKING:`` blocks included."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cyclealign") and node.level == 0:
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            stack += node.body + node.orelse + getattr(node, "finalbody", []) + [s for h in getattr(node, "handlers", []) for s in h.body]
    return found


def used_names(tree: ast.Module) -> set[str]:
    """Every name the module reads, in code or in a string annotation (``-> "Generation"``)."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    annotations = [a.annotation for a in ast.walk(tree) if isinstance(a, ast.arg) and a.annotation is not None]
    annotations += [f.returns for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.returns]
    annotations += [a.annotation for a in ast.walk(tree) if isinstance(a, ast.AnnAssign)]
    for annotation in annotations:
        for c in ast.walk(annotation):
            if isinstance(c, ast.Constant) and isinstance(c.value, str):
                try:
                    names |= {n.id for n in ast.walk(ast.parse(c.value, mode="eval")) if isinstance(n, ast.Name)}
                except SyntaxError:
                    pass
    return names


def declared_all(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts]
    return []


def test_no_module_re_exports_another_modules_names():
    # a name imported from another cyclealign module is there to be used, not to be forwarded:
    # importers take it from the module that defines it (cyclealign.config, the public face, aside)
    forwarded = []
    for name, path in MODULES.items():
        if name in PUBLIC_FACE:
            continue
        tree = ast.parse(path.read_text())
        used, exported = used_names(tree), set(declared_all(tree))
        imported = {}
        for node in top_level_imports(tree):
            for alias in node.names:
                bound = alias.asname or alias.name
                imported[bound] = node.module
                if bound in exported or bound not in used:
                    forwarded.append(f"{name}: {bound} (from {node.module})")
        for node in tree.body:  # an alias under a new name forwards too: ``PHASES = TIMED_PHASES``
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in imported:
                forwarded.append(f"{name}: {node.value.id} as {ast.unparse(node.targets[0])} (from {imported[node.value.id]})")
    assert forwarded == []


def test_no_lazy_attribute_tables():
    # a module __getattr__ serves names a module does not define (the old ranker/__init__.py table)
    assert [n for n, p in MODULES.items() if "def __getattr__(" in p.read_text()] == []


@pytest.mark.parametrize("module", sorted(n for n in MODULES if n in ("cyclealign.records", "cyclealign.rundir") or n.startswith("cyclealign.config")))
def test_records_rundir_and_config_stand_apart_from_policy_ranker_and_train(module):
    # what a round writes and how it is configured must not depend on who produces it
    imported = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    forbidden = ("cyclealign.policy", "cyclealign.ranker", "cyclealign.train")
    assert sorted(m for m in imported if m.startswith(forbidden)) == []


LIGHT = '''
import sys
from cyclealign.cli import app

HEAVY = {heavy!r}
loaded = {{}}
for name in ("cyclealign.policy", "cyclealign.ranker", "cyclealign.models", "cyclealign.templates", "cyclealign.data",
             "cyclealign.evaluation", "cyclealign.report", "cyclealign.train", "cyclealign.config", "cyclealign.records",
             "cyclealign.rundir", "cyclealign.policy.base"):
    __import__(name)
loaded["import cyclealign.cli and every package"] = [m for m in HEAVY if m in sys.modules]
for args in {commands!r}:
    try:
        app(args, prog_name="cyclealign")
    except SystemExit as e:
        if e.code not in (0, None):
            print("FAILED", args, e.code, file=sys.stderr)
    loaded[" ".join(args)] = [m for m in HEAVY if m in sys.modules]
print(repr(loaded))
'''


def test_light_commands_load_no_torch_transformers_or_openai(tmp_path):
    from cyclealign.config import build_config
    from cyclealign.rundir import RunDir

    cfg = build_config(run_dir=tmp_path / "run", rounds=1, **{"ranker.base_url": "http://x/v1", "ranker.model": "m"})
    RunDir(cfg.run_dir).prepare(cfg.to_json(), resume=False)
    run, folder = str(cfg.run_dir), str(tmp_path / "templates")
    commands = [
        ["--help"], ["iterate", "--help"], ["eval", "--help"], ["status", "--run-dir", run], ["status", "--run-dir", run, "--json"], ["reparse", "--run-dir", run],
        ["templates", "list"], ["templates", "show", "ranker_system"], ["templates", "path"], ["templates", "copy", "--templates", folder],
        ["templates", "check", "--templates", folder], ["templates", "render", "ranker"], ["templates", "render", "judge"],
        ["config", "show"], ["config", "schema"], ["config", "show", "--run-dir", run], ["config", "fields"], ["--version"],
    ]
    code = LIGHT.format(heavy=HEAVY, commands=commands)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "FAILED" not in out.stderr, out.stderr
    loaded = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert {step: mods for step, mods in loaded.items() if mods} == {}
    assert len(loaded) == len(commands) + 1


def test_importing_the_cli_loads_no_torch():
    # what `python -X importtime -c 'import cyclealign.cli'` shows, as a check
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cyclealign.cli"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "cyclealign.cli" in modules
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
