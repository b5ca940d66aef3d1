"""Every command's --help says what each option does, its default and what to type; shell completion works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from clipseg_cli.cli import EXAMPLES, app
from helpers import clipseg, subprocess_env

COMMANDS = tuple(EXAMPLES)


def _help(monkeypatch: pytest.MonkeyPatch, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: the texts below are found whole
    done = clipseg(*command, "--help")
    assert done.code == 0, done.stderr
    return " ".join(done.stdout.split())


def _params(name: str) -> list:
    group = typer.main.get_command(app)
    return group.commands[name].params


def test_every_command_is_listed_with_examples() -> None:
    assert set(COMMANDS) == set(typer.main.get_command(app).commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_option_its_text_and_default(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    shown = _help(monkeypatch, name)
    for param in _params(name):
        if param.help:  # literally: "[default: 4 on CPU, 16 on GPU]" is text, not Rich markup
            assert " ".join(param.help.split()) in shown, (param.name, param.help)
        if param.opts and param.opts[0].startswith("--"):
            assert param.opts[0] in shown
        if param.default not in (None, False, True, ()) and not param.required:
            assert f"[default: {param.default}]" in shown, (param.name, param.default)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_what_to_type_and_ends_with_examples(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    text = clipseg(name, "--help").stdout
    options = [line for line in text.splitlines() if line.strip().startswith("-")]
    assert len(options) >= (1 if name == "cache" else 2)  # cache: a group, its options are its commands'
    for typed in ("<bool>", "<str>", "<list[str]>", "<int range>", "<float range>"):
        assert not any(typed in line for line in options), typed
    last = [line.strip() for line in text.splitlines() if line.strip()][-len(EXAMPLES[name].splitlines()):]
    assert last == EXAMPLES[name].splitlines() and 2 <= len(last) <= 4
    assert all(f"clipseg {name}" in line for line in last)


def test_choices_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _help(monkeypatch, "segment")
    for choices in ("auto|cpu|cuda|mps", "auto|fast|fp32|bf16|fp16|int8", "none|guided|matting|sam", "R,G,B[,A]|NAME"):
        assert choices in shown
    assert "--prompt PROMPT" in " ".join(_help(monkeypatch, "batch").replace("-p ", "").split())


HELPS = [(), *((name,) for name in COMMANDS), ("cache", "clear")]


def _command(*path: str) -> typer.core.TyperCommand:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", HELPS, ids=" ".join)
def test_help_reads_at_80_columns(monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    narrow = clipseg(*path, "--help")
    monkeypatch.setenv("COLUMNS", "1000")
    wide = clipseg(*path, "--help").stdout
    assert narrow.code == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in narrow.stdout
    # what to type, never a type's name: <list[str]>, <path>, <bool>, {IMAGE}
    assert not re.search(r"<[a-z][\w\[\]|, ]*>|\{[A-Z_]+\}", narrow.stdout), narrow.stdout
    assert not re.search(r"x[<>]=?\d|\d<=?x", narrow.stdout)  # a range in words: [0.0 to 1.0], [at least 1]
    # every word whole: the words at 80 columns are the words at 1000 (only an example's line break is added)
    assert sorted(word for word in narrow.stdout.split() if word != "\\") == sorted(wide.split())
    assert len(lines) > len(wide.splitlines())  # the narrow help did wrap
    for param in _command(*path).params:
        assert param.help, f"{param.name} has no description"


def test_usage_errors_read_like_every_other_error() -> None:
    unknown = clipseg("segment", "--bogus", "photo.jpg")
    assert unknown.code == 2 and "error: No such option: --bogus" in unknown.stderr
    assert "Error" not in unknown.stderr and "Try 'clipseg segment -h' for help." in unknown.stderr
    kind = clipseg("cache", "clear", "--what", "graphs")
    assert kind.code == 2
    assert kind.errors() == ["error: Invalid value for '--what': 'graphs' is not a kind of entry; use one of onnx, "
                             "embeddings, activations"]
    assert "Usage: clipseg cache clear [OPTIONS]" in kind.stderr


@pytest.fixture
def bash(tmp_path: Path) -> Callable[[str], str]:
    """Run a bash script with HOME in tmp_path and a ``clipseg`` on PATH that runs this checkout."""
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "clipseg").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m clipseg_cli "$@"\n')
    (bin_dir / "clipseg").chmod(0o755)
    env = subprocess_env(HOME=str(tmp_path), SHELL="/bin/bash", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                         PYTHONPATH=os.pathsep.join(sys.path))

    def run(script: str) -> str:
        # typer finds the shell to complete for among clipseg's parent processes (shellingham). `bash -c CMD` execs its
        # last command, so bash would not be a parent and the answer came from whatever started pytest ("Shell
        # not supported" where that was no shell): the trailing `:` keeps bash the parent, as at a prompt
        done = subprocess.run(["bash", "-c", f"{script}\n:"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.mark.slow
def test_install_completion_makes_bash_complete_commands_options_and_choices(bash, tmp_path: Path) -> None:
    assert "complete -o default -F _clipseg_completion clipseg" in bash("clipseg --show-completion")
    bash("clipseg --install-completion")
    [script] = (tmp_path / ".bash_completions").iterdir()
    assert str(script) in (tmp_path / ".bashrc").read_text()

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{word}'" for word in words)
        return bash(f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                    f'_clipseg_completion clipseg; printf "%s\\n" "${{COMPREPLY[@]}}"').split()

    assert complete("clipseg", "ba") == ["batch"]
    assert "--device" in complete("clipseg", "segment", "--dev")
    assert complete("clipseg", "segment", "photo.jpg", "car", "--device", "") == ["auto", "cpu", "cuda", "mps"]
    assert complete("clipseg", "batch", "in/", "--precision", "") == ["auto", "fast", "fp32", "bf16", "fp16", "int8"]
    assert "--install-completion" in " ".join(clipseg("--help").stdout.split())
