"""Every command's --help says what each option does, its default and what to type; shell completion works."""

from __future__ import annotations

import os
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
    options = [line for line in text.splitlines() if line.strip("│ ").lstrip("* ").startswith("--")]
    assert len(options) >= (1 if name == "cache" else 2)  # cache: a group, its options are its commands'
    for typed in ("<bool>", "<str>", "<list[str]>", "<int range>", "<float range>"):
        assert not any(typed in line for line in options), typed
    last = [line.strip() for line in text.splitlines() if line.strip()][-len(EXAMPLES[name].splitlines()):]
    assert last == EXAMPLES[name].splitlines() and 2 <= len(last) <= 3
    assert all(f"clipseg {name}" in line for line in last)


def test_choices_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = _help(monkeypatch, "segment")
    for choices in ("auto|cpu|cuda|mps", "auto|fast|fp32|bf16|fp16|int8", "none|guided|matting|sam", "R,G,B[,A]|NAME"):
        assert choices in shown
    assert "--prompt PROMPT" in " ".join(_help(monkeypatch, "batch").replace("-p ", "").split())


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
