"""--precision bf16 on the CPU runs programs traced once per checkpoint (`backends.traced`): the masks of the eager
bf16 path bit for bit, a warm start without transformers' CLIP modules, damaged programs traced again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clipseg_cli.runtime as runtime
from clipseg_cli import Segmenter
from clipseg_cli.backends.graph_cache import entry_dir, program_path
from clipseg_cli.backends.traced import prepare_programs
from clipseg_cli.prompts import Average
from factory import probe_image
from helpers import clipseg, subprocess_env

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache
PREPARING = "preparing the bf16 model for this CPU, once (about "
EMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as benchmarks/bench.py --emulate-avx2
PROMPTS = ["car", "a tree in the park", "sky"]


def segment(photo: Path, checkpoint: Path, out: Path, *extra: object):
    """Returns: (the run's Outcome, its masks' bytes by name)."""
    done = clipseg("segment", photo, *PROMPTS, "--weights", checkpoint,
                   "--precision", "bf16", "--no-overlay", "-o", out, *extra)
    assert done.code == 0, done.stderr
    return done, {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


def eager_masks(photo: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The masks of the eager bf16 path (transformers' modules), which a cache that cannot be written falls back to."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with monkeypatch.context() as patch:
        patch.setenv("CLIPSEG_CACHE", str(blocker))
        done, masks = segment(photo, checkpoint, tmp_path / "eager")
    (line,) = [line for line in done.stderr.splitlines() if "cache" in line]
    assert str(blocker) in line and "running bf16 with transformers' modules instead" in line
    return masks


@pytest.mark.slow
def test_bf16_masks_equal_the_eager_path_s_bit_for_bit_and_the_programs_are_traced_once(
        own_cache, checkpoint, photo, tmp_path, monkeypatch):
    first, traced = segment(photo, checkpoint, tmp_path / "traced")
    assert [line for line in first.stderr.splitlines() if PREPARING in line] != []
    entry = entry_dir(checkpoint)
    assert program_path(entry, "segment").is_file() and program_path(entry, "text").is_file()
    warm, again = segment(photo, checkpoint, tmp_path / "warm", "-q")
    assert warm.stderr == "" and again == traced
    assert traced == eager_masks(photo, checkpoint, tmp_path, monkeypatch)
    assert len(traced) == len(PROMPTS) and len(set(traced.values())) == len(PROMPTS)  # the prompts' masks differ
    listed = clipseg("cache")
    assert listed.code == 0 and "bf16 programs" in listed.stdout


@pytest.mark.slow
def test_bf16_logits_equal_the_eager_path_s_for_batches_long_prompts_and_example_images(own_cache, checkpoint):
    traced = Segmenter.from_pretrained(checkpoint, precision="bf16", device="cpu")
    eager = Segmenter.from_pretrained(checkpoint, precision="bf16", device="cpu", backend="torch")
    assert not hasattr(traced.runner, "model") and hasattr(eager.runner, "model")
    images = [probe_image(seed, (40 + 20 * seed, 90 - 10 * seed)) for seed in range(3)]
    prompts = ["car", "a very long description of a red car parked beside a tree", probe_image(7),
               Average(["car", "tree"])]
    for batch in (images[:1], images):
        assert np.array_equal(traced.logits(batch, prompts).numpy(), eager.logits(batch, prompts).numpy())
    assert traced.identity == eager.identity  # the same outputs: reruns accept each other's
    assert program_path(entry_dir(checkpoint), "visual").is_file()  # traced on the first example image


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "checksum gone"])
def test_a_damaged_cached_program_is_traced_again_and_the_masks_stay_right(
        damage, own_cache, checkpoint, photo, tmp_path):
    _, clean = segment(photo, checkpoint, tmp_path / "clean", "-q")
    program = program_path(entry_dir(checkpoint), "segment")
    data = bytearray(program.read_bytes())
    if damage == "flipped bytes":
        middle = slice(len(data) // 4, len(data) // 2)
        data[middle] = bytes(byte ^ 0xFF for byte in data[middle])
        program.write_bytes(bytes(data))
    elif damage == "truncated":
        program.write_bytes(bytes(data[: len(data) // 2]))
    else:
        program.with_name(program.name + ".sum").unlink()
    done, masks = segment(photo, checkpoint, tmp_path / "again")
    assert masks == clean
    (line,) = [line for line in done.stderr.splitlines() if "cache" in line]
    assert str(program) in line and "tracing it again" in line
    assert segment(photo, checkpoint, tmp_path / "third", "-q")[0].stderr == ""  # stored whole again


@pytest.mark.slow
def test_a_warm_bf16_start_does_not_import_transformers_clip_modules(own_cache, checkpoint, photo, tmp_path):
    prepare_programs(checkpoint, progress=False)
    assert not prepare_programs(checkpoint, progress=False)
    command = [sys.executable, "-X", "importtime", "-m", "clipseg_cli", "segment", str(photo), "car", "--weights",
               str(checkpoint), "--precision", "bf16", "--no-overlay", "-q", "-o", str(tmp_path / "out")]
    done = subprocess.run(command, env=subprocess_env(CLIPSEG_CACHE=str(own_cache)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "photo.car.mask.png").is_file()
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and not any(name.startswith("transformers") for name in imported)


@pytest.mark.slow
@pytest.mark.parametrize("emulated", [False, True], ids=["this-cpu", "emulated-avx2-cpu"])
def test_download_weights_prepare_traces_the_programs_only_where_fast_means_bf16(
        emulated, hub_server, checkpoint, tmp_path):
    bf16 = not emulated and runtime.fast_cpu_precision() == "bf16"  # CPUs with AMX; int8 elsewhere
    served = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    hub_server.add_revision("CIDAS/clipseg-rd64-refined", "main", served)
    cache = tmp_path / "cache"
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(tmp_path / "hub"), CLIPSEG_CACHE=str(cache),
                         **(EMULATED_AVX2 if emulated else {}))
    env.pop("HF_HUB_OFFLINE")
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "download-weights", "--prepare"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    entry = entry_dir(Path(done.stdout.strip()), cache / "onnx")
    assert (entry / "segment-fp32.onnx").is_file() and (entry / "segment-int8.onnx").is_file() != bf16
    assert program_path(entry, "segment").is_file() == bf16
    assert (PREPARING in done.stderr) == bf16
