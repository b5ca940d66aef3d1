"""Ray: ``clipseg batch --ray`` and the Ray Data API write what a plain run writes, byte for byte.

One local Ray with 2 CPUs serves the module (as CI runs it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from clipseg_cli.errors import ClipSegError
from clipseg_cli.run.engine import Pipeline
from clipseg_cli.run.inputs import collect
from clipseg_cli.run.job import Job
from clipseg_cli.scale.ray_batch import RayBatch
from clipseg_cli.scale.ray_data import SegmentBatch, read_image_files, segment, write_masks
from clipseg_cli.scale.ray_start import start_or_join
from helpers import Outcome, clipseg, files, is_loopback, listening_sockets, make_folder, run_batch


def comparable(records: list[dict], out: Path) -> list[dict]:
    """Records with the output folder left out of paths and the statistics to 1e-6: another batch size or
    thread count moves a mean probability in its last digits (float32 sums), never a pixel."""
    def value(key: str, found: object) -> object:
        if isinstance(found, str):
            return found.replace(str(out), "OUT")
        return pytest.approx(found, abs=1e-6) if isinstance(found, float) else found

    return [{key: value(key, found) for key, found in record.items()} for record in records]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    assert start_or_join("local", num_cpus=2)  # as clipseg starts one: on loopback only
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> tuple[Path, Path, Outcome]:
    """(input folder, output folder, outcome) of a plain run over `make_folder`."""
    root = tmp_path_factory.mktemp("plain")
    folder = make_folder(root)
    done = run_batch(folder, root / "out", checkpoint)
    assert done.code == 1
    return folder, root / "out", done


@pytest.mark.slow
def test_ray_run_is_the_plain_run(plain, checkpoint: Path, tmp_path: Path, local_ray: None) -> None:
    folder, expected, first = plain
    out = tmp_path / "ray"
    done = run_batch(folder, out, checkpoint, "--ray", "--batch-size", "2")
    assert done.code == 1
    assert done.errors() == first.errors() and any("broken.jpg" in line for line in done.errors())
    assert files(out) == files(expected)
    assert comparable(done.records(), out) == comparable(first.records(), expected)  # in input order
    again = run_batch(folder, out, checkpoint, "--ray", "--ray-actors", "1")
    assert {r["status"] for r in again.records() if "broken" not in r["image"]} == {"skipped"}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the sockets from /proc")
def test_the_local_ray_listens_on_loopback_only(local_ray: None) -> None:
    found = listening_sockets(os.getpid())  # this process's Ray: GCS, raylet, agents, workers
    assert {"gcs_server", "raylet"} <= {name for *_, name in found}
    assert [entry for entry in found if not is_loopback(entry[0])] == []


@pytest.mark.slow
def test_ray_and_shards_together_are_the_plain_run(plain, checkpoint: Path, tmp_path: Path, local_ray: None) -> None:
    folder, expected, first = plain
    out, records = tmp_path / "mixed", []
    for index in range(3):  # one shard on Ray, the others here, into one folder
        on_ray = ["--ray", "--ray-actors", "1"] if index == 1 else []
        done = run_batch(folder, out, checkpoint, "--shard", f"{index}/3", *on_ray)
        records += done.records()
    assert files(out) == files(expected)
    key = lambda record: (record["image"], record["prompt"])  # noqa: E731
    assert sorted(comparable(records, out), key=key) == sorted(comparable(first.records(), expected), key=key)


@pytest.mark.slow
def test_a_lost_actor_is_replaced_and_its_work_redone(plain, checkpoint: Path, tmp_path: Path,
                                                     local_ray: None) -> None:
    folder, expected, _ = plain
    out = tmp_path / "out"
    items = collect([str(folder)], output_dir=out, recursive=True)
    job = Job(["car", "tree"], pipeline=Pipeline(batch_size=1))
    runner = RayBatch(job, {"name": checkpoint, "device": "cpu", "precision": "fp32"}, actors=2)
    lost = runner.actors[0]
    ray.kill(lost)  # gone for good, as on a lost node or an OOM kill: Ray does not start it again
    results = list(runner.process(items))
    assert files(out) == files(expected)  # nothing lost, every file whole
    assert sorted(r.status for r in results) == ["failed"] * 2 + ["ok"] * 14  # broken.jpg's two prompts


@pytest.mark.slow
def test_actors_the_cluster_cannot_hold_are_refused_at_once(checkpoint: Path, local_ray: None) -> None:
    with pytest.raises(ClipSegError) as refused:  # Ray would wait for the third for ever
        RayBatch(Job(["car"]), {"name": checkpoint, "device": "cpu", "precision": "fp32"}, actors=3)
    assert str(refused.value) == ("--ray: 3 actor(s) of 1 CPU do not fit in this Ray cluster (2 CPU(s) on 1 node(s): "
                                  "room for 2); lower --ray-actors")
    assert ray.is_initialized()  # not started by the runner: not stopped by it


@pytest.mark.slow
def test_bad_weights_on_ray_are_a_setup_error(plain, tmp_path: Path, local_ray: None) -> None:
    folder, _, _ = plain
    (tmp_path / "empty").mkdir()
    done = clipseg("batch", folder, "-p", "car", "-o", tmp_path / "out", "--weights", tmp_path / "empty", "--ray",
                   "--ray-actors", "1")
    assert done.code == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")


@pytest.mark.slow
def test_ray_data_api_writes_the_same_files(plain, checkpoint: Path, tmp_path: Path, local_ray: None) -> None:
    folder, expected, _ = plain
    images = read_image_files(str(folder))
    masks = segment(images, checkpoint, Job(["car", "tree"]), precision="fp32", batch_size=3, concurrency=1,
                    num_cpus=1)
    records = write_masks(masks, str(tmp_path / "api")).take_all()
    assert files(tmp_path / "api") == files(expected)
    failed = [record for record in records if record["status"] == "failed"]
    assert [(Path(r["path"]).name, r["prompt"]) for r in failed] == [("broken.jpg", "car"), ("broken.jpg", "tree")]
    assert str(folder / "sub" / "broken.jpg") in failed[0]["error"]
    assert len(records) == 8 * 2


def test_segment_batch_takes_local_paths_without_ray(plain, checkpoint: Path) -> None:
    folder, expected, _ = plain
    segmenter = SegmentBatch(checkpoint, Job(["car", "tree"]), precision="fp32")
    paths = [folder / "a.png", folder / "sub" / "deep" / "e.png"]
    table = segmenter({"path": np.array([str(p) for p in paths]), "folder": np.array(["", "sub/deep"])})
    rows = table.to_pylist()
    assert [(Path(r["path"]).name, r["prompt"], r["status"]) for r in rows] == \
        [("a.png", "car", "ok"), ("a.png", "tree", "ok"), ("e.png", "car", "ok"), ("e.png", "tree", "ok")]
    for row in rows:
        for kind in ("mask", "overlay"):
            assert row[kind] == (expected / row[f"{kind}_name"]).read_bytes()
        assert row["cutout"] is None and 0 <= row["coverage"] <= 1


def without_text_chunks(png: bytes) -> bytes:
    """A PNG file's bytes without its iTXt chunks (our fingerprint)."""
    import struct

    kept, offset = [png[:8]], 8
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        if kind != b"iTXt":
            kept.append(png[offset : offset + 12 + length])
        offset += 12 + length
    return b"".join(kept)


@pytest.mark.slow
def test_ray_data_images_are_segmented_in_memory(plain, checkpoint: Path, local_ray: None) -> None:
    folder, expected, _ = plain
    names = {folder / "a.png": "a", folder / "c.png": "c", folder / "sub" / "deep" / "e.png": "sub/deep/e"}
    images = ray.data.read_images([str(path) for path in names], mode="RGB", include_paths=True)
    rows = segment(images, checkpoint, Job(["car", "tree"]), precision="fp32", batch_size=2, concurrency=1,
                   num_cpus=1).take_all()
    assert sorted((Path(row["path"]).name, row["prompt"]) for row in rows) == \
        [(name, prompt) for name in ("a.png", "c.png", "e.png") for prompt in ("car", "tree")]
    stems = {Path(path).name: stem for path, stem in names.items()}
    for row in rows:
        written = expected / f"{stems[Path(row['path']).name]}.{row['prompt']}.mask.png"
        assert row["status"] == "ok" and row["mask"].dtype == np.uint8
        assert np.array_equal(row["mask"], np.asarray(Image.open(written)))  # the pixels the CLI writes
        assert row["soft"].dtype == np.float32 and row["soft"].shape == row["mask"].shape
    encoded = SegmentBatch(checkpoint, Job(["car", "tree"]), precision="fp32", encode="png")
    table = encoded({"image": np.array([np.asarray(Image.open(folder / "a.png").convert("RGB"))]),
                     "path": np.array(["a.png"])})
    for prompt, png in zip(table["prompt"], table["mask"], strict=True):
        assert png == without_text_chunks((expected / f"a.{prompt}.mask.png").read_bytes())  # byte for byte
