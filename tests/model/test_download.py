"""Fetching checkpoints: the real huggingface_hub download code against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from clipseg_cli.checkpoints.download import download, locate
from clipseg_cli.errors import CheckpointError, ClipSegError
from hub_server import FakeHub

REPO = "CIDAS/clipseg-rd64-refined"
SRC = Path(__file__).resolve().parents[2] / "src"


def make_repo(folder: Path, *, reduce_dim: int, seed: int) -> Path:
    """A tiny checkpoint folder in the Hub's layout, pickled weights included (never to be fetched)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "clipseg", "reduce_dim": reduce_dim}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": 352, "resample": 2}))
    (folder / "vocab.json").write_text(json.dumps({"a</w>": 0, "b</w>": 1}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    tensors = {"decoder.weight": torch.randn(64, reduce_dim, generator=torch.Generator().manual_seed(seed))}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights: never fetch me")
    return folder


@pytest.fixture
def repo_files(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo-main", reduce_dim=64, seed=0)


@pytest.fixture
def hub(hub_server: FakeHub, repo_files: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The fake Hub serving REPO at main; the environment says online and points nowhere else."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    hub_server.add_revision(REPO, "main", repo_files)
    return hub_server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def fetch(hub: FakeHub, cache: Path, name: str = REPO, **kwargs) -> Path:
    return download(name, cache_dir=cache, endpoint=hub.url, progress=False, **kwargs)


def assert_same_files(folder: Path, source: Path) -> None:
    names = ["config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "model.safetensors"]
    for name in names:
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name
    assert not (folder / "pytorch_model.bin").exists()


def test_download_fills_an_empty_cache(hub: FakeHub, cache: Path, repo_files: Path) -> None:
    snapshot = fetch(hub, cache)
    assert snapshot.is_relative_to(cache)
    assert_same_files(snapshot, repo_files)
    assert "pytorch_model.bin" not in hub.requested_files("GET") + hub.requested_files("HEAD")


def test_locate_resolves_an_alias_and_downloads_on_a_cache_miss(hub: FakeHub, cache: Path, repo_files: Path) -> None:
    snapshot = locate("rd64-refined", cache_dir=cache, endpoint=hub.url, progress=False)
    assert_same_files(snapshot, repo_files)


def test_cache_hit_needs_no_server(
    hub: FakeHub, cache: Path, repo_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = fetch(hub, cache)
    hub.stop()
    seen = len(hub.requests)
    assert locate(REPO, cache_dir=cache, endpoint=hub.url, offline=False) == snapshot
    assert locate(REPO, cache_dir=cache, offline=True) == snapshot
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate("rd64-refined", cache_dir=cache) == snapshot
    assert len(hub.requests) == seen


def test_offline_with_an_empty_cache_says_how_to_fetch(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ClipSegError, match=f"clipseg download-weights {REPO}$") as caught:
        locate(REPO, cache_dir=cache, endpoint=hub.url, offline=True)
    assert "not in the local cache" in str(caught.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipSegError, match="downloads are off"):
        locate(REPO, cache_dir=cache, endpoint=hub.url)
    assert hub.requests == []


def test_output_dir_is_a_self_contained_checkpoint(hub: FakeHub, cache: Path, repo_files: Path, tmp_path: Path) -> None:
    output = tmp_path / "weights"
    assert fetch(hub, cache, output_dir=output) == output
    assert_same_files(output, repo_files)
    assert not any(path.is_symlink() for path in output.iterdir())
    assert not list(output.glob(".*clipseg-tmp"))
    for path in cache.rglob("*"):  # the copy does not lean on the cache
        if path.is_file() or path.is_symlink():
            path.unlink()
    assert locate(str(output), offline=True) == output
    assert_same_files(output, repo_files)


def test_a_pinned_revision_gets_its_own_content(hub: FakeHub, cache: Path, repo_files: Path, tmp_path: Path) -> None:
    old_files = make_repo(tmp_path / "repo-v1", reduce_dim=16, seed=1)
    old_sha = hub.add_revision(REPO, "v1.0", old_files)
    main_snapshot = fetch(hub, cache)
    old_snapshot = fetch(hub, cache, revision="v1.0")
    assert old_snapshot.name == old_sha
    assert_same_files(old_snapshot, old_files)
    assert_same_files(main_snapshot, repo_files)
    assert locate(REPO, revision="v1.0", cache_dir=cache, offline=True) == old_snapshot
    assert locate(REPO, revision=old_sha, cache_dir=cache, offline=True) == old_snapshot
    assert locate(REPO, cache_dir=cache, offline=True) == main_snapshot


def test_an_interrupted_transfer_resumes_where_it_stopped(
    hub: FakeHub, cache: Path, repo_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks so that bytes received before the cut reach the file, as they do with real sizes.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    size = (repo_files / "model.safetensors").stat().st_size
    hub.cut_transfer("model.safetensors", after_bytes=size // 2)
    snapshot = fetch(hub, cache)
    assert_same_files(snapshot, repo_files)
    ranges = [r.range for r in hub.requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= size // 2


def test_a_failed_transfer_leaves_no_partial_file_and_the_next_call_completes(
    hub: FakeHub, cache: Path, repo_files: Path
) -> None:
    hub.cut_transfer("model.safetensors", after_bytes=100)
    hub.fail_transfer("model.safetensors", status=503)  # the retry fails too: the call gives up
    with pytest.raises(ClipSegError, match=f"^{REPO}: .*503") as caught:
        fetch(hub, cache)
    assert "\n" not in str(caught.value)
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert leftovers == []  # config etc. may be there; no piece of the weights is
    assert not list(cache.rglob("*.incomplete"))
    assert_same_files(fetch(hub, cache), repo_files)


def test_corrupted_weights_are_rejected_and_removed(hub: FakeHub, cache: Path, repo_files: Path) -> None:
    hub.corrupt("model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: downloaded content does not match .*sha256"):
        fetch(hub, cache)
    good = (repo_files / "model.safetensors").read_bytes()
    bad = bytes(byte ^ 0x5A for byte in good)
    assert not any(p.read_bytes() == bad for p in cache.rglob("*") if p.is_file())
    with pytest.raises(ClipSegError, match="download-weights"):
        locate(REPO, cache_dir=cache, offline=True)  # the cache does not pass off what is left as complete
    assert_same_files(fetch(hub, cache), repo_files)


def test_corruption_is_caught_without_symlinks_too(
    hub: FakeHub, cache: Path, repo_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_SYMLINKS", True)
    hub.corrupt("config.json")
    with pytest.raises(CheckpointError, match=r"config.json: .* \(git sha1 "):
        fetch(hub, cache)
    assert not list(cache.rglob("config.json"))
    snapshot = fetch(hub, cache)
    assert not (snapshot / "config.json").is_symlink()
    assert_same_files(snapshot, repo_files)


def test_unknown_repo_and_revision_give_one_line_errors(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(ClipSegError, match=r"^someone/nothing-here: no such repository") as caught:
        fetch(hub, cache, "someone/nothing-here")
    assert "\n" not in str(caught.value)
    assert not isinstance(caught.value, CheckpointError)
    with pytest.raises(ClipSegError, match=r"revision 'v9' does not exist") as caught:
        locate(REPO, revision="v9", cache_dir=cache, endpoint=hub.url)
    assert "\n" not in str(caught.value)


def test_unreachable_hub_gives_a_one_line_error(hub: FakeHub, cache: Path) -> None:
    hub.stop()
    with pytest.raises(ClipSegError, match=r"cannot reach the Hub at http://127\.0\.0\.1") as caught:
        locate(REPO, cache_dir=cache, endpoint=hub.url, offline=False)
    assert "\n" not in str(caught.value)


def test_a_name_that_is_neither_a_folder_nor_a_hub_id_lists_the_choices(tmp_path: Path) -> None:
    expected = r"rd64-nope: unknown model; use one of CIDAS/clipseg-rd64-refined, .*directory"
    with pytest.raises(ClipSegError, match=expected):
        locate("rd64-nope", cache_dir=tmp_path)
    assert locate(str(tmp_path)) == tmp_path


def test_no_progress_output_when_progress_is_off(hub: FakeHub, cache: Path, capfd: pytest.CaptureFixture[str]) -> None:
    fetch(hub, cache)
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_hf_endpoint_from_the_environment_is_honoured(hub: FakeHub, cache: Path) -> None:
    code = "import sys; from clipseg_cli.checkpoints.download import download; print(download(sys.argv[1]))"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(SRC)}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent.parent == cache / "models--CIDAS--clipseg-rd64-refined"
    assert hub.requested_files("GET")
