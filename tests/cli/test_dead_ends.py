"""The first hour's dead ends: each error names what the user typed and what to do, through the real entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import clipseg

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache


@pytest.mark.parametrize("name", ["weights/refined", "weights/refined/", "./nonexistent", "~/nowhere/tuned",
                                  "a/b/c"])
def test_a_path_like_weights_name_where_no_folder_is_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "weights").mkdir()  # weights/refined: its first part is a folder, so it is a folder, not a Hub id
    (tmp_path / "photo.png").write_bytes(b"")
    done = clipseg("segment", "photo.png", "cat", "--weights", name)
    assert done.code == 2
    [error] = done.errors()
    assert error.startswith(f"error: {name}: no such checkpoint directory;"), error
    assert f"clipseg download-weights --output-dir {name}" in error and "Hub" not in error.split(";")[0]


def test_an_owner_slash_name_is_still_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CIDAS").mkdir()  # a folder named like an owner does not hide the published checkpoints
    for name in ("someone/model", "CIDAS/clipseg-rd64-refined"):
        done = clipseg("download-weights", name)
        assert done.code == 2
        assert "no such checkpoint directory" not in done.stderr and "HF_HUB_OFFLINE" in done.stderr, done.stderr


def test_download_weights_prepares_a_checkpoint_folder(checkpoint: Path) -> None:
    done = clipseg("download-weights", checkpoint, "--prepare", "-q")
    assert done.code == 0, done.stderr
    assert done.stdout.splitlines() == [str(checkpoint)]
    again = clipseg("download-weights", checkpoint, "--prepare")
    assert again.code == 0 and again.stderr == ""  # prepared: the cache holds what this CPU runs


def test_download_weights_refuses_a_folder_that_is_no_checkpoint(tmp_path: Path) -> None:
    done = clipseg("download-weights", tmp_path, "--prepare")
    assert done.code == 2
    assert done.errors() == [f"error: {tmp_path}: not a checkpoint directory (no config.json in it); write one there "
                             f"with: clipseg download-weights --output-dir {tmp_path}"]


def test_segment_without_a_prompt_advises_what_segment_takes(tmp_path: Path) -> None:
    done = clipseg("segment", tmp_path / "photo.jpg")
    assert done.code == 2
    [error] = done.errors()
    assert "clipseg segment" in error and "PROMPT" in error and "--prompt-image" in error
    assert "-p/--prompt" not in error and "--prompts-file" not in error  # batch's options, not segment's


@pytest.mark.parametrize(("command", "says"), [
    (["batch", "in/", "-p", "cat", "-o", "out/"], "finished outputs are complete, rerun to do the rest"),
    (["serve"], "the server is down"),
    (["train", "records.jsonl", "-o", "tuned/"], "training stopped"),
    (["eval", "records.jsonl"], "no metrics were printed"),
    (["download-weights"], "rerun to fetch the rest"),
    (["cache", "clear"], "rerun to finish"),
])
def test_every_command_says_what_an_interrupt_left(monkeypatch: pytest.MonkeyPatch, command: list[str],
                                                  says: str) -> None:
    import clipseg_cli.cli as cli

    def interrupted(argv: list[str] | None) -> int:
        raise KeyboardInterrupt  # Ctrl-C while the command runs

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    done = clipseg(*command)
    assert done.code == 130
    assert done.errors() == [f"error: interrupted; {cli.AFTER_A_STOP[command[0]]}"]
    assert says in done.stderr
    if command[0] != "batch":
        assert "finished outputs" not in done.stderr
    monkeypatch.setattr(sys, "argv", ["clipseg", *command])
    assert cli._after_a_stop(None) == cli.AFTER_A_STOP[command[0]]
