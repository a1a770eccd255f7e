"""The docs cannot drift from the code: every `python -m cdb...` command they show (in a code block or
inline) names a module that exists, flags that module's --help lists and settings keys it knows, and
every repository file or folder they point to is there."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

from cdb import config as cfg
from cdb import settings

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "k8s" / "README.md",
        REPO / "ray_jobs" / "README.md", REPO / "bench" / "RESULTS.md"]
TOP_LEVEL = ("cdb", "docs", "tests", "bench", "scripts", "k8s", "ray_jobs", "ds_configs", ".ci")
"""A backticked path starting with one of these folders names a file or folder of the repository."""
OTHERS = {"docs/METHOD.md": "scripts/"}
"""Paths of another repository a doc names: METHOD.md's scripts/ are the authors' released code."""


def commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, its arguments up to the end of the command) for each command in the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        spans = re.findall(r"```[a-z]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]*python[^`\n]* -m cdb[^`\n]*)`", text)
        for span in spans:
            for line in span.replace("\\\n", " ").splitlines():
                match = re.match(r"\s*(?:\$ )?(?:[A-Z_]+=\S+ )*(?:\S*/)?python[\d.]* -m (cdb[\w.]*)(.*)", line.split(" # ")[0])
                if not match:
                    continue
                words = shlex.split(match.group(2).replace("$(", "(").replace("`", ""), posix=True)
                for stop in ("|", "&&", ";", ">", "2>&1"):
                    words = words[:words.index(stop)] if stop in words else words
                found.append((f"{doc.relative_to(REPO)}: {line.strip()[:80]}", match.group(1), words))
    return found


MAINS = {"cdb.train": "cdb.train", "cdb.sweep": "cdb.sweep", "cdb.report": "cdb.report", "cdb.eval": "cdb.eval.__main__",
         "cdb.config": "cdb.config", "cdb.memory": "cdb.memory", "cdb.sync": "cdb.sync", "cdb.data": "cdb.data.construct.__main__"}
"""The module whose main(argv) `python -m MODULE` runs (cdb.data: its `build` subcommand)."""


@cache
def help_flags(module: str) -> frozenset[str]:
    """The flags `python -m MODULE --help` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(MAINS[module]).main(["--help"])
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", out.getvalue()))


@cache
def known_keys(module: str) -> frozenset[str]:
    """The settings keys `--set` takes in `module`."""
    training = set(cfg.resolve().flat())
    if module in ("cdb.train", "cdb.config", "cdb.memory"):
        return frozenset(training)
    if module == "cdb.sweep":
        from cdb.sweep import SweepSettings

        return frozenset(training | {key for key, *_ in settings.describe(SweepSettings)})
    if module == "cdb.eval":
        from cdb.eval.options import EvalOptions

        return frozenset(key for key, *_ in settings.describe(EvalOptions))
    if module == "cdb.report":
        from cdb.report import ReportSettings

        return frozenset(key for key, *_ in settings.describe(ReportSettings))
    if module == "cdb.data":
        from cdb.data.construct.config import BuildSettings

        return frozenset(key for key, *_ in settings.describe(BuildSettings))
    return frozenset()


def test_the_docs_show_commands():
    modules = {module for _, module, _ in commands()}
    assert {"cdb.train", "cdb.sweep", "cdb.eval", "cdb.report", "cdb.config", "cdb.data"} <= modules


@pytest.mark.parametrize("where, module, words", commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_command_in_the_docs_runs_as_written(where, module, words):
    if module == "cdb.data":
        assert words[:1] == ["build"], f"{where}: cdb.data has one command, build"
    flags = help_flags(module)
    for word in words:
        if word.startswith("--"):
            assert word.split("=")[0] in flags, f"{where}: {module} has no flag {word.split('=')[0]}"
    keys = known_keys(module)
    for flag, value in zip(words, words[1:]):
        if flag == "--set":
            key = value.split("=")[0]
            assert key in keys or key.isupper(), f"{where}: {module} knows no setting {key}"


CHEAP = {"cdb.config", "cdb.memory"}
"""Modules whose documented commands run here for real (seconds, nothing written); the others are
checked against their --help above."""


def runnable(words: list[str]) -> bool:
    """Not a template (a placeholder such as NAME or KEY=VALUE), and writes nothing."""
    return "--write-resolved" not in words and not any(re.fullmatch(r"[A-Z_]+(=[A-Z_]+)?", w) for w in words)


@pytest.mark.parametrize("where, module, words", [c for c in commands() if c[1] in CHEAP and runnable(c[2])],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_the_cheap_commands_in_the_docs_run(where, module, words, capsys):
    code = importlib.import_module(MAINS[module]).main(words)
    out = capsys.readouterr()
    assert code in (0, 1) and out.out and not out.err, f"{where}: exit {code}\n{out.err[-2000:]}"  # memory: 1 = does not fit


def test_every_path_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):  # markdown links
            if not re.match(r"\w+://|mailto:", target) and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(REPO)}: link {target}")
        for span in re.findall(r"`([^`\s]+)`", text):
            path = span.rstrip("/").split(":")[0]
            others = OTHERS.get(str(doc.relative_to(REPO)))
            if others and path.startswith(others):
                continue
            if path.split("/")[0] in TOP_LEVEL and "/" in path and not re.search(r"[<>*{}$]|\.\.\.|…", path):
                if not (REPO / path).exists():
                    missing.append(f"{doc.relative_to(REPO)}: {span}")
    assert not missing, "\n".join(missing)


def test_the_layout_in_the_docs_is_the_tree():
    """docs/development.md's layout names every module and package of cdb/, and nothing that is gone."""
    text = (REPO / "docs" / "development.md").read_text()
    block = text.split("## Layout")[1].split("```")[1]
    named = set(re.findall(r"^(cdb/[\w/]+?(?:\.py)?/?)\s", block, re.M))
    assert all((REPO / path).exists() for path in named), sorted(p for p in named if not (REPO / p).exists())
    tree = {f"cdb/{p.name}" + ("/" if p.is_dir() else "") for p in (REPO / "cdb").iterdir()
            if p.name != "__init__.py" and not p.name.startswith((".", "__pycache__"))}
    listed = {path if path.endswith((".py", "/")) else path + "/" for path in named}
    mentioned = set(re.findall(r"(cdb/[\w]+/?)", block))  # also those named inside a line (cdb/assets/)
    assert not tree - listed - {m if m.endswith((".py", "/")) else m + "/" for m in mentioned}, sorted(tree - listed)
