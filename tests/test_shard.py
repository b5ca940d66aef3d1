"""Job arrays: ``clipseg batch --shard K/N`` and ``clipseg shards``, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipseg_cli.inputs import collect
from clipseg_cli.shard import Shard, parse_shard, select
from helpers import clipseg, files, make_folder, noise, run_batch, same_records, save


def shard_of(folder: Path, out: Path, name: str, count: int = 3) -> int:
    items = collect([str(folder)], output_dir=out, recursive=True)
    return next(k for k in range(count) for item in select(items, Shard(k, count), out) if item.source.name == name)


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


def test_rerun_of_a_done_shard_skips_it_and_force_or_new_settings_redo_it(tmp_path: Path, checkpoint: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "sub" / "broken.jpg").unlink()
    out = tmp_path / "out"
    first = run_batch(folder, out, checkpoint, "--shard", "1/2")
    assert first.code == 0, first.stderr
    assert first.records()
    stamps = {name: (out / name).stat().st_mtime_ns for name in files(out)}
    again = run_batch(folder, out, checkpoint, "--shard", "1/2")
    assert (again.code, again.stdout) == (0, "")
    assert f"shard 1/2 is done already ({out / '.clipseg-shards' / 'shard-1-of-2.done'}); --force redoes it" \
        in again.stderr
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
