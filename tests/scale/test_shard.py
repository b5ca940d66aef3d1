"""Job arrays: ``clipseg batch --shard K/N`` and ``clipseg shards``, through the real entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clipseg_cli.run.inputs import collect
from clipseg_cli.scale.sharding import Shard, parse_shard, select
from helpers import clipseg, files, make_folder, noise, run_batch, same_records, save


def shard_of(folder: Path, out: Path, name: str, count: int = 3) -> int:
    items = collect([str(folder)], output_dir=out, recursive=True)
    return next(k for k in range(count) for item in select(items, Shard(k, count), out) if item.source.name == name)


@pytest.mark.slow
def test_every_shard_together_is_the_plain_run_byte_for_byte(tmp_path: Path, checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    plain = run_batch(folder, tmp_path / "plain", checkpoint)
    assert plain.code == 1
    sharded, codes, records = tmp_path / "sharded", [], []
    for index in range(3):
        done = run_batch(folder, sharded, checkpoint, "--shard", f"{index}/3")
        codes.append(done.code)
        records += done.records()
        manifest = sharded / ".clipseg-shards" / f"shard-{index}-of-3.jsonl"
        assert [json.loads(line) for line in manifest.read_text().splitlines()] == done.records()
    broken = shard_of(folder, sharded, "broken.jpg")
    assert codes == [1 if index == broken else 0 for index in range(3)]
    assert any("broken.jpg" in line for line in
               run_batch(folder, sharded, checkpoint, "--shard", f"{broken}/3").errors())  # named again on rerun
    expected = files(tmp_path / "plain")
    assert len(expected) == 7 * 2 * 2  # 7 good images x 2 prompts x (mask, overlay)
    assert files(sharded) == expected
    assert same_records(records, sharded) == same_records(plain.records(), tmp_path / "plain")
    status = clipseg("shards", sharded, "--count", 3)
    assert status.code == 1
    assert status.stdout.strip() == f"1 of 3 shard(s) not done: {broken}"


def test_adding_an_image_moves_only_that_image(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    before = {k: {item.source for item in select(collect([str(folder)], output_dir=out, recursive=True),
                                                 Shard(k, 4), out)} for k in range(4)}
    save(noise((20, 20), seed=9), folder / "sub" / "new.png")
    after = {k: {item.source for item in select(collect([str(folder)], output_dir=out, recursive=True),
                                                Shard(k, 4), out)} for k in range(4)}
    assert sum(len(shard) for shard in before.values()) == 8
    assert all(after[k] - {folder / "sub" / "new.png"} == before[k] for k in range(4))
    assert len({k for k in range(4) if before[k]}) > 1  # the hash spreads the images


@pytest.mark.slow
def test_rerun_of_a_done_shard_skips_it_and_force_or_new_settings_redo_it(tmp_path: Path, checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    first = run_batch(folder, out, checkpoint, "--shard", "1/2")
    assert first.code == 0, first.stderr
    assert first.records()
    stamps = {name: (out / name).stat().st_mtime_ns for name in files(out)}
    again = run_batch(folder, out, checkpoint, "--shard", "1/2")
    assert again.code == 0
    assert f"shard 1/2 is done already ({out / '.clipseg-shards' / 'shard-1-of-2.done'}); checking its outputs, " \
        "--force redoes it" in again.stderr
    assert again.records() == [{**r, "status": "skipped"} for r in first.records()]  # the stored lines, kept
    assert {name: (out / name).stat().st_mtime_ns for name in files(out)} == stamps
    forced = run_batch(folder, out, checkpoint, "--shard", "1/2", "--force")
    assert {r["status"] for r in forced.records()} == {"ok"}
    changed = run_batch(folder, out, checkpoint, "--shard", "1/2", "-t", "0.6")
    assert {(r["status"], r["reason"]) for r in changed.records()} == {("ok", "settings changed (threshold)")}
    assert clipseg("shards", out, "--count", 2).stdout.strip() == "1 of 2 shard(s) not done: 0"
    assert run_batch(folder, out, checkpoint, "--shard", "0/2").code == 0
    status = clipseg("shards", out, "--count", 2)
    assert (status.code, status.stdout.strip()) == (0, "all 2 shard(s) done")


def test_a_failed_shard_is_not_done_and_its_rerun_does_the_rest(tmp_path: Path, checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    out = tmp_path / "out"
    broken = shard_of(folder, out, "broken.jpg", count=2)
    assert run_batch(folder, out, checkpoint, "--shard", f"{broken}/2").code == 1
    assert not (out / ".clipseg-shards" / f"shard-{broken}-of-2.done").exists()
    save(noise((30, 30), seed=7), folder / "sub" / "broken.jpg", format="JPEG")  # the user fixes the file
    rerun = run_batch(folder, out, checkpoint, "--shard", f"{broken}/2")
    assert rerun.code == 0, rerun.stderr
    statuses = {(Path(r["image"]).name, r["status"]) for r in rerun.records()}
    assert ("broken.jpg", "ok") in statuses
    assert {status for name, status in statuses if name != "broken.jpg"} == {"skipped"}


def test_shard_auto_reads_the_job_array(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path)
    for name in ("SLURM_ARRAY_TASK_COUNT", "JOB_COMPLETION_INDEX", "CLIPSEG_SHARD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "6")
    done = run_batch(folder, tmp_path / "out", checkpoint, "--shard", "auto")
    assert (tmp_path / "out" / ".clipseg-shards" / "shard-1-of-3.jsonl").is_file(), done.stderr


@pytest.mark.parametrize(("environ", "shard"), [
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9",
      "SLURM_ARRAY_TASK_STEP": "4"}, Shard(2, 3)),
    ({"JOB_COMPLETION_INDEX": "0", "CLIPSEG_SHARD_COUNT": "10"}, Shard(0, 10)),
    ({"CLIPSEG_SHARD_INDEX": "3", "CLIPSEG_SHARD_COUNT": "4"}, Shard(3, 4)),
])
def test_shard_auto_environments(environ: dict[str, str], shard: Shard) -> None:
    assert parse_shard("auto", environ) == shard


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "3/3"], "error: --shard 3/3: shard 3 does not exist; with 3 shards K runs from 0 to 2"),
    (["--shard", "0/0"], "error: --shard 0/0: the number of shards is 0; it must be at least 1"),
    (["--shard", "a/b"], "error: --shard 'a/b': give K/N (shard K of N, numbered from 0, e.g. 0/4) or auto"),
    (["--shard", "1/100001"], "error: --shard 1/100001: the number of shards is 100001; it must be at most 100000"),
    (["--shard", "auto"], "error: --shard auto: no array task in the environment (SLURM_ARRAY_TASK_ID, "
                          "JOB_COMPLETION_INDEX or CLIPSEG_SHARD_INDEX, each with a count); run it in a job array "
                          "or give --shard K/N"),
])
def test_bad_shards_are_one_line_setup_errors(tmp_path: Path, checkpoint: Path, args: list[str], message: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "CLIPSEG_SHARD_INDEX"):
        monkeypatch.delenv(name, raising=False)
    folder = make_folder(tmp_path)
    done = run_batch(folder, tmp_path / "out", checkpoint, *args)
    assert (done.code, done.stderr.strip(), done.stdout) == (2, message, "")
    assert not (tmp_path / "out").exists()


def test_kubernetes_index_without_a_count_says_which_variable_to_set() -> None:
    with pytest.raises(Exception, match="JOB_COMPLETION_INDEX is set but not CLIPSEG_SHARD_COUNT"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "1"})


@pytest.mark.slow
def test_a_done_shard_still_checks_every_output_and_gives_the_plain_rerun_files(tmp_path: Path,
                                                                                 checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    plain, out = tmp_path / "plain", tmp_path / "out"
    assert run_batch(folder, plain, checkpoint).code == 0
    for index in range(2):
        assert run_batch(folder, out, checkpoint, "--shard", f"{index}/2").code == 0
    assert run_batch(folder, out, checkpoint, "-t", "0.6").code == 0  # a plain run with another threshold
    assert files(out) != files(plain)
    for index in range(2):
        again = run_batch(folder, out, checkpoint, "--shard", f"{index}/2")
        assert again.code == 0, again.stderr
        assert {(r["status"], r["reason"]) for r in again.records()} == {("ok", "settings changed (threshold)")}
    assert files(out) == files(plain)
    lost = sorted(out.rglob("*.mask.png"))[:3]
    for path in lost:
        path.unlink()
    for index in range(2):
        assert run_batch(folder, out, checkpoint, "--shard", f"{index}/2").code == 0
    assert files(out) == files(plain)
    status = clipseg("shards", out, "--count", 2)
    assert (status.code, status.stdout.strip()) == (0, "all 2 shard(s) done")


def test_an_input_changed_in_place_is_redone_by_its_shard(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    for index, name in enumerate(["a.png", "b.png", "c.png"]):
        save(noise((40, 30), seed=index), folder / name, compress_level=0)  # stored: the size is the pixels'
    out, image = tmp_path / "out", folder / "a.png"
    index = shard_of(folder, out, "a.png", count=2)
    assert run_batch(folder, out, checkpoint, "--shard", f"{index}/2").code == 0
    info = image.stat()
    save(noise((40, 30), seed=99), image, compress_level=0)  # other pixels, same size, same time (cp -p)
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)
    again = run_batch(folder, out, checkpoint, "--shard", f"{index}/2")
    assert "is done already" not in again.stderr
    redone = {(Path(r["image"]).name, r["status"], r["reason"]) for r in again.records() if r["status"] != "skipped"}
    assert redone == {("a.png", "ok", "input file changed")}


@pytest.mark.slow
def test_shards_that_saw_different_inputs_are_told_and_a_rerun_names_as_a_plain_run(tmp_path: Path,
                                                                                   checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    for index, name in enumerate(["x.jpg", "a.png", "b.png", "c.png"]):
        save(noise((36, 30), seed=index), folder / name)
    out = tmp_path / "out"
    count = next(n for n in range(2, 20) if Shard(0, n).holds("x.jpg") != Shard(0, n).holds("x.png")
                 and Shard(1, n).holds("x.jpg") != Shard(1, n).holds("x.png")
                 and (Shard(0, n).holds("x.jpg") or Shard(1, n).holds("x.jpg")))
    first = next(k for k in range(count) if Shard(k, count).holds("x.jpg"))
    assert run_batch(folder, out, checkpoint, "--shard", f"{first}/{count}").code == 0
    save(noise((36, 30), seed=7), folder / "x.png")  # added between the shards
    for index in range(count):
        if index != first:
            assert run_batch(folder, out, checkpoint, "--shard", f"{index}/{count}").code == 0
    status = clipseg("shards", out, "--count", count)
    assert status.code == 1
    assert status.stdout.count("\n") == 1 and "named their outputs from different inputs" in status.stdout
    assert f"shard(s) {first} from 4 input(s)" in status.stdout
    rerun = run_batch(folder, out, checkpoint, "--shard", f"{first}/{count}")
    assert rerun.code == 0
    assert "named their outputs from different inputs" in rerun.stderr
    assert run_batch(folder, tmp_path / "plain", checkpoint).code == 0
    assert files(out) == files(tmp_path / "plain")
    assert "x_jpg.car.mask.png" in files(out)
    assert clipseg("shards", out, "--count", count).stdout.strip() == f"all {count} shard(s) done"


@pytest.mark.slow
@pytest.mark.parametrize("content", ["", "not json", "[]", '{"shard": "0/2"}'])
def test_an_empty_or_garbage_marker_is_not_done_for_shards_nor_batch(tmp_path: Path, checkpoint: Path,
                                                                      content: str) -> None:
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    for index in range(2):
        assert run_batch(folder, out, checkpoint, "--shard", f"{index}/2").code == 0
    (out / ".clipseg-shards" / "shard-0-of-2.done").write_text(content)
    status = clipseg("shards", out, "--count", 2)
    assert (status.code, status.stdout.strip()) == (1, "1 of 2 shard(s) not done: 0")
    again = run_batch(folder, out, checkpoint, "--shard", "0/2")
    assert "is done already" not in again.stderr
    assert clipseg("shards", out, "--count", 2).code == 0


def test_shards_refuses_a_count_past_the_bound_in_one_line(tmp_path: Path) -> None:
    done = clipseg("shards", tmp_path, "--count", 3000000)
    assert (done.code, done.stdout, done.stderr.strip()) == (
        2, "", "error: --count 3000000: the number of shards must be 1 to 100000")


@pytest.mark.parametrize("value", ["--3", "\u00b2", "\u0662", "-1", "3x"])
def test_shard_auto_takes_only_ascii_digits(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                            value: str) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", value)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    folder = make_folder(tmp_path)
    done = run_batch(folder, tmp_path / "out", checkpoint, "--shard", "auto")
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr.strip() == f"error: --shard auto: SLURM_ARRAY_TASK_ID={value!r} is not a whole number " \
                                  "(ASCII digits)"


def test_a_shard_of_a_hub_name_sees_the_snapshot_move(tmp_path: Path, checkpoint: Path, offline: None) -> None:
    import shutil

    from safetensors.numpy import load_file, save_file

    repo = tmp_path / "hf-cache" / "models--CIDAS--clipseg-rd64-refined"
    for revision in ("1" * 40, "2" * 40):
        shutil.copytree(checkpoint, repo / "snapshots" / revision)
    weights = repo / "snapshots" / ("2" * 40) / "model.safetensors"
    tensors = load_file(weights)
    name = next(name for name in sorted(tensors) if "decoder" in name and name.endswith("bias"))
    tensors[name] = tensors[name] + 0.5  # the second snapshot holds other weights
    save_file(tensors, weights)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    hub = ("--weights", "CIDAS/clipseg-rd64-refined")
    assert run_batch(folder, out, checkpoint, "--shard", "0/2", *hub).code == 0
    (repo / "refs" / "main").write_text("2" * 40)  # the cache's main moved on
    again = run_batch(folder, out, checkpoint, "--shard", "0/2", *hub)
    assert again.code == 0, again.stderr
    assert "is done already" not in again.stderr
    assert {(r["status"], r["reason"]) for r in again.records()} == {("ok", "weights changed")}


def test_shard_reruns_keep_the_statistics_of_kept_outputs_and_store_them(tmp_path: Path, checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    manifest = out / ".clipseg-shards" / "shard-1-of-2.jsonl"
    quiet = clipseg("batch", folder, "-r", "-p", "car", "-p", "tree", "-o", out, "--weights", checkpoint,
                    "--precision", "fp32", "--shard", "1/2", "-q")  # the first run prints no JSON
    assert quiet.code == 0, quiet.stderr
    measured = {(r["image"], r["prompt"]): r for r in run_batch(folder, tmp_path / "plain", checkpoint).records()}
    assert measured and all(r["coverage"] is not None for r in measured.values())

    def same_statistics(records: list[dict]) -> None:
        assert records
        for record in records:
            want = measured[(record["image"], record["prompt"])]
            assert {key: record[key] for key in ("coverage", "bbox", "mean_probability")} == \
                {key: want[key] for key in ("coverage", "bbox", "mean_probability")}, record

    for _ in range(2):  # a done shard's rerun, then the rerun of that rerun (its stored lines)
        again = run_batch(folder, out, checkpoint, "--shard", "1/2")
        assert again.code == 0, again.stderr
        assert {r["status"] for r in again.records()} == {"skipped"}
        same_statistics(again.records())
        same_statistics([json.loads(line) for line in manifest.read_text().splitlines()])
    lost = sorted(out.rglob("*.car.mask.png"))[0]  # one output redone, the rest kept: both keep their numbers
    lost.unlink()
    redone = run_batch(folder, out, checkpoint, "--shard", "1/2")
    assert sorted(r["status"] for r in redone.records()).count("ok") == 1
    same_statistics(redone.records())
    same_statistics([json.loads(line) for line in manifest.read_text().splitlines()])
