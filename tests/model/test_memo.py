"""The weights' checksum memo (fingerprint.content_sha256): a memo is used only when its own check holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import clipseg_cli.fingerprint as fingerprint


@pytest.fixture
def memo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own, where a file just written is settled at once (so its memo is written)."""
    monkeypatch.setenv("CLIPSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_SETTLED_NS", -(10 ** 12))
    monkeypatch.setattr(fingerprint, "_memo", {})
    return tmp_path / "cache" / "content-sha256"


def weights_file(folder: Path, content: bytes) -> tuple[Path, str]:
    path = folder / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def test_a_good_memo_is_used_and_saves_the_reading(memo_root: Path, tmp_path: Path) -> None:
    path, real = weights_file(tmp_path / "a", b"weights" * 1000)
    assert fingerprint.content_sha256(path) == real
    [memo] = memo_root.iterdir()
    fingerprint._memo.clear()
    sealed = memo.read_text()
    fake = "1" * 64
    memo.write_text(sealed.replace(real, fake))  # only the sum changed: the check no longer fits
    assert fingerprint.content_sha256(path) == real
    fingerprint._memo.clear()
    assert memo.read_text() == sealed  # rewritten by the reading
    assert fingerprint.content_sha256(path) == real


@pytest.mark.parametrize("damage", [
    "0" * 64 + "\n",  # the attack: 64 zeros
    "0" * 64,
    "",
    "not hex at all",
    "{sum}",  # the right sum without its check is not trusted either: the check is the point
    "{zeros} {check_of_zeros_elsewhere}",  # a check made for another file's state
])
def test_a_memo_without_a_check_that_fits_is_never_trusted(memo_root: Path, tmp_path: Path, damage: str) -> None:
    path, real = weights_file(tmp_path / "a", b"weights" * 1000)
    fingerprint.content_sha256(path)
    [memo] = memo_root.iterdir()
    other, _ = weights_file(tmp_path / "b", b"other weights")
    fingerprint.content_sha256(other)
    other_memo = next(p for p in memo_root.iterdir() if p != memo)
    other_check = other_memo.read_text().split()[1]
    memo.write_text(damage.format(sum=real, zeros="0" * 64, check_of_zeros_elsewhere=other_check))
    fingerprint._memo.clear()
    assert fingerprint.content_sha256(path) == real
    fingerprint._memo.clear()
    assert fingerprint.content_sha256(path) == real  # and the memo was made good again
    assert memo.read_text().split()[0] == real


def test_a_memo_copied_under_another_files_name_is_not_used(memo_root: Path, tmp_path: Path) -> None:
    first, _ = weights_file(tmp_path / "a", b"first")
    second, real_second = weights_file(tmp_path / "b", b"second")
    fingerprint.content_sha256(first)
    [first_memo] = memo_root.iterdir()
    fingerprint.content_sha256(second)
    second_memo = next(p for p in memo_root.iterdir() if p != first_memo)
    second_memo.write_bytes(first_memo.read_bytes())  # a whole, well-formed memo of another file
    fingerprint._memo.clear()
    assert fingerprint.content_sha256(second) == real_second
