"""`clipseg video` runs: reruns skip by fingerprint, bad inputs fail in one line each, a killed run resumes from its
last finished chunk with the masks of an uninterrupted run, JSON lines and the summary."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from video_clips import decoded_frames, make_clip, picture

from clipseg_cli.video import chunks as chunks_module
from helpers import clipseg

pytestmark = pytest.mark.usefixtures("offline")


def outputs(folder: Path) -> dict[str, int]:
    """The output files in a folder and their modification times (hidden files and folders left out)."""
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if not path.name.startswith(".")}


def test_a_rerun_skips_finished_videos_and_redoes_what_changed(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", frames=5)
    out = tmp_path / "out"
    first = clipseg("video", clip, "-p", "square", "-o", out, "--json", *weights)
    assert first.code == 0, first.stderr
    assert [record["status"] for record in first.records()] == ["ok"]
    assert first.records()[0]["frames"] == 5
    written = outputs(out)
    assert set(written) == {"clip.square.mask.mkv", "clip.square.overlay.mp4"}

    again = clipseg("video", clip, "-p", "square", "-o", out, "--json", *weights)
    assert again.code == 0 and [record["status"] for record in again.records()] == ["skipped"]
    assert outputs(out) == written  # not touched

    changed = clipseg("video", clip, "-p", "square", "-o", out, "--json", "--threshold", "0.6", *weights)
    record = changed.records()[0]
    assert record["status"] == "ok" and record["reason"] == "settings changed (threshold)"

    smoothed = clipseg("video", clip, "-p", "square", "-o", out, "--json", "--threshold", "0.6", "--smooth", "0.5",
                       *weights)
    assert smoothed.records()[0]["reason"] == "settings changed (pull, scene_cut, smooth)"

    (out / "clip.square.overlay.mp4").write_bytes(b"another tool's file")
    replaced = clipseg("video", clip, "-p", "square", "-o", out, "--json", "--threshold", "0.6", "--smooth", "0.5",
                       *weights)
    assert replaced.records()[0]["status"] == "ok" and "another tool" in replaced.records()[0]["reason"]
    assert not any(path.name.startswith(".") for path in out.iterdir())  # no temporary file, no chunk folder


def write_zero_frames(path: Path) -> Path:
    """A Matroska file with a video stream that holds no frame (and a sound that does)."""
    source = make_clip(path.with_suffix(".src.mp4"), frames=3)
    with av.open(str(source)) as inside, av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("ffv1", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream_from_template(inside.streams.audio[0])
        for packet in inside.demux(inside.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = sound
                out.mux(packet)
    return path


def write_size_change(path: Path) -> Path:
    """A raw H.264 stream whose frames are 64x48 and then 32x24."""
    data = b""
    for size, first in (((64, 48), 0), ((32, 24), 4)):
        part = path.with_suffix(f".{first}.h264")
        make_clip(part, size=size, frames=4, audio=False)
        data += part.read_bytes()
    path.write_bytes(data)
    return path


def write_truncated(path: Path) -> Path:
    make_clip(path, frames=12, audio=False, codec="ffv1")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


BAD = {
    "not a video": (lambda p: (p.write_text("hello"), p)[1], "clip.mp4", "not a video file"),
    "no video stream": (lambda p: make_clip(p.with_suffix(".mp4"), frames=3).rename(p) and _audio_only(p),
                        "sound.m4a", "no video stream"),
    "zero frames": (write_zero_frames, "empty.mkv", "no frames"),
    "size change": (write_size_change, "both.h264", "frame size changes at frame 4 (64x48 -> 32x24)"),
}


def _audio_only(path: Path) -> Path:
    """Rewrite a clip with its sound only."""
    source = path.with_suffix(".src.mp4")
    path.rename(source)
    with av.open(str(source)) as inside, av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream_from_template(inside.streams.audio[0])
        for packet in inside.demux(inside.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_fails_in_one_line_and_the_others_are_done(tmp_path: Path, weights: list[str], case: str):
    make, name, message = BAD[case]
    (tmp_path / "in").mkdir()
    bad = make(tmp_path / "in" / name)
    good = make_clip(tmp_path / "in" / "good.mp4", frames=3, audio=False)
    run = clipseg("video", bad, good, "-p", "square", "-o", tmp_path / "out", "--json", *weights)
    assert run.code == 1
    assert run.errors() == [f"error: {bad}: " + run.errors()[0].split(f"{bad}: ", 1)[1]]  # one line, naming it
    assert message in run.errors()[0], run.errors()
    statuses = {Path(record["video"]).name: record["status"] for record in run.records()}
    assert statuses == {bad.name: "failed", "good.mp4": "ok"}
    assert sorted(outputs(tmp_path / "out")) == ["good.square.mask.mkv", "good.square.overlay.mp4"]


def test_a_truncated_video_has_its_decodable_frames_done_and_says_where_it_broke(tmp_path: Path,
                                                                                weights: list[str]):
    clip = write_truncated(tmp_path / "cut.mkv")
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--json", *weights)
    assert run.code == 1
    [error] = run.errors()
    record = run.records()[0]
    assert record["status"] == "failed" and 0 < record["frames"] < 12
    assert f"stopped at frame {record['frames']}" in error and "truncated" in error
    masks = decoded_frames(tmp_path / "out" / "cut.square.mask.mkv", "gray")
    assert len(masks) == record["frames"]
    again = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--json", *weights)
    assert again.code == 1 and again.records()[0]["status"] == "failed"  # never skipped as if whole


def test_frames_over_max_pixels_are_refused_before_decoding(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", frames=3)
    run = clipseg("video", clip, "-p", "square", "-o", tmp_path / "out", "--max-pixels", "1000", *weights)
    assert run.code == 1
    assert run.errors() == [f"error: {clip}: frames are 64x48 = 3072 pixels, over the limit of 1000 "
                            "(raise it with --max-pixels)"]
    assert not (tmp_path / "out").exists() or not outputs(tmp_path / "out")


@pytest.mark.parametrize("smooth", ["0", "0.6"])
def test_a_killed_run_resumes_from_its_last_finished_chunk_with_the_same_masks(
        tmp_path: Path, weights: list[str], monkeypatch: pytest.MonkeyPatch, smooth: str):
    clip = make_clip(tmp_path / "long.mp4", frames=14)
    flags = ["-p", "square", "--batch-size", "2", "--chunk-frames", "4", "--smooth", smooth, "--cutout", *weights]
    whole = clipseg("video", clip, "-o", tmp_path / "whole", *flags)
    assert whole.code == 0, whole.stderr

    finish, segmented = chunks_module.ChunkStore.finish, []

    def killed_after_two_chunks(self, chunk, frames, state):
        finish(self, chunk, frames, state)
        if chunk == 1:
            raise KeyboardInterrupt  # as Ctrl-C lands between two chunks

    monkeypatch.setattr(chunks_module.ChunkStore, "finish", killed_after_two_chunks)
    killed = clipseg("video", clip, "-o", tmp_path / "out", *flags)
    assert killed.code == 130
    assert outputs(tmp_path / "out") == {}  # no output file, whole or half
    work = tmp_path / "out" / ".long.clipseg-video"
    assert sorted(p.name for p in work.iterdir() if p.name.endswith(".json")) == ["000000.frames.json",
                                                                                   "000001.frames.json"]
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # the third chunk's files were removed

    monkeypatch.setattr(chunks_module.ChunkStore, "finish", finish)
    from clipseg_cli.run.engine import Engine

    maps = Engine.maps
    monkeypatch.setattr(Engine, "maps", lambda self, images: (segmented.extend(images), maps(self, images))[1])
    resumed = clipseg("video", clip, "-o", tmp_path / "out", *flags)
    assert resumed.code == 0, resumed.stderr
    assert len(segmented) == 14 - 8  # from frame 8 on
    for kind in ("mask.mkv", "cutout.mov"):
        fmt = "gray" if kind.startswith("mask") else "rgba"
        got = decoded_frames(tmp_path / "out" / f"long.square.{kind}", fmt)
        want = decoded_frames(tmp_path / "whole" / f"long.square.{kind}", fmt)
        assert len(got) == len(want) == 14
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not work.exists()


def test_json_lines_summary_folders_and_shards(tmp_path: Path, weights: list[str]):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.mkv", "notes.txt"):
        path = tmp_path / "in" / name
        make_clip(path, frames=2, audio=False) if name.endswith(("mp4", "mkv")) else path.write_text("x")
    run = clipseg("video", tmp_path / "in", "-r", "-p", "square", "-p", "disc", "-o", tmp_path / "out", "--json",
                  *weights)
    assert run.code == 0, run.stderr
    records = run.records()
    assert [(Path(r["video"]).name, r["prompt"]) for r in records] == [
        ("a.mp4", "square"), ("a.mp4", "disc"), ("b.mkv", "square"), ("b.mkv", "disc")]
    assert records[2]["mask"] == str(tmp_path / "out" / "sub" / "b.square.mask.mkv")
    assert "2 video(s), 4 frame(s) segmented; 4 output set(s) written, 0 skipped" in run.stderr
    shards = [clipseg("video", tmp_path / "in", "-r", "-p", "square", "-o", tmp_path / "sharded", "--json",
                      "--shard", f"{k}/2", *weights).records() for k in (0, 1)]
    assert sorted(Path(r["video"]).name for part in shards for r in part) == ["a.mp4", "b.mkv"]
    assert json.loads(json.dumps(records))  # plain JSON


def test_frames_keep_their_pictures(tmp_path: Path):
    clip = make_clip(tmp_path / "clip.mkv", frames=3, codec="ffv1", audio=False, rate=Fraction(25))
    frames = decoded_frames(clip)
    assert np.abs(frames[2].astype(int) - picture(2, (64, 48))).mean() < 3  # the helper's clip is what it says


def test_an_output_that_cannot_be_written_fails_that_video_in_one_line(tmp_path: Path, weights: list[str]):
    clip = make_clip(tmp_path / "clip.mp4", frames=2, audio=False)
    out = tmp_path / "out"
    (out / "clip.square.overlay.mp4").mkdir(parents=True)  # a folder where the overlay goes
    run = clipseg("video", clip, "-p", "square", "-o", out, "--json", *weights)
    assert run.code == 1
    assert run.errors() == [f"error: cannot write {out / 'clip.square.overlay.mp4'}: Is a directory"], run.stderr
    assert run.records()[0]["status"] == "failed"
