"""The command line through its real entry points: ``clipseg_cli.cli.main`` in-process, and ``python -m clipseg_cli``.

Every test looks at what a user would notice: files, pixels, exit codes, stderr lines and JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.constants import TEMP_SUFFIX
from clipseg_cli.imaging.writing import PALETTE
from helpers import (
    Outcome,
    binary_mask,
    clipseg,
    names,
    noise,
    pixels,
    read_all,
    save,
    start_held,
    subprocess_env,
    wait_until_held,
)
from hub_server import FakeHub

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

JSON_KEYS = {"image", "prompt", "mask", "overlay", "status", "error", "coverage"}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save(noise((72, 48)), tmp_path / "photos" / "photo.png")


# ---- segment: files, names, pixels ------------------------------------------------------------------------------


@pytest.mark.slow
def test_segment_writes_a_binary_mask_and_a_tinted_overlay_beside_the_image(photo: Path, weights: list[str]) -> None:
    done = clipseg("segment", photo, "red car", *weights)
    assert done.code == 0, done.stderr
    assert done.stdout == ""
    assert "1 mask(s) written" in done.stderr
    assert names(photo.parent) == {"photo.png", "photo.red-car.mask.png", "photo.red-car.overlay.png"}
    mask = binary_mask(photo.parent / "photo.red-car.mask.png", (72, 48))
    assert mask.any() and not mask.all()  # this image and checkpoint give a mixed mask: both checks below bite
    overlay = pixels(photo.parent / "photo.red-car.overlay.png", "RGB", (72, 48)).astype(int)
    image = np.asarray(Image.open(photo)).astype(int)
    assert (overlay[~mask] == image[~mask]).all()
    # masked pixels are half image, half the first prompt's colour, or on the outline: that colour or black
    tinted = np.abs(overlay - np.rint(image * 0.5 + np.array(PALETTE[0]) * 0.5)).max(axis=2) <= 1
    outline = (overlay == PALETTE[0]).all(axis=2) | (overlay == 0).all(axis=2)
    assert (tinted | outline)[mask].all() and tinted[mask].any() and outline[mask].any()


def test_several_prompts_with_colliding_slugs_get_distinct_files(photo: Path, weights: list[str]) -> None:
    done = clipseg("segment", photo, "red car", "Red Car!", "tree", *weights, "--json", "--no-overlay")
    assert done.code == 0, done.stderr
    records = done.records()
    lossy = f"photo.red-car-{hashlib.sha256(b'Red Car!').hexdigest()[:6]}.mask.png"  # see tests/test_naming.py
    assert [(r["prompt"], Path(r["mask"]).name) for r in records] == [
        ("red car", "photo.red-car.mask.png"),
        ("Red Car!", lossy),
        ("tree", "photo.tree.mask.png"),
    ]
    assert all(r["overlay"] is None for r in records)
    assert names(photo.parent) == {"photo.png", "photo.red-car.mask.png", lossy, "photo.tree.mask.png"}


def test_output_dir_gets_the_outputs_and_the_image_folder_is_untouched(photo: Path, weights: list[str]) -> None:
    out = photo.parent.parent / "new" / "out"
    done = clipseg("segment", photo, "car", *weights, "-o", out)
    assert done.code == 0, done.stderr
    assert names(photo.parent) == {"photo.png"}
    assert names(out) == {"photo.car.mask.png", "photo.car.overlay.png"}
    binary_mask(out / "photo.car.mask.png", (72, 48))


def test_json_has_one_object_per_image_and_prompt_with_the_mask_coverage(photo: Path, weights: list[str]) -> None:
    done = clipseg("segment", photo, "car", "tree", *weights, "--json")
    assert done.code == 0, done.stderr
    records = done.records()
    assert len(records) == 2
    for record, prompt in zip(records, ["car", "tree"], strict=True):
        assert record.keys() >= JSON_KEYS
        assert (record["image"], record["prompt"], record["status"], record["error"]) == (str(photo), prompt, "ok",
                                                                                          None)
        assert Path(record["overlay"]).is_file()
        assert record["coverage"] == pytest.approx(binary_mask(record["mask"], (72, 48)).mean())


def test_soft_writes_the_probability_as_grey(photo: Path, weights: list[str]) -> None:
    assert clipseg("segment", photo, "car", *weights, "-o", photo.parent / "hard").code == 0
    done = clipseg("segment", photo, "car", *weights, "-o", photo.parent / "soft", "--soft", "--no-overlay")
    assert done.code == 0, done.stderr
    soft = pixels(photo.parent / "soft" / "photo.car.mask.png", "L", (72, 48)).astype(int)
    assert ((soft > 0) & (soft < 255)).any()
    assert len(np.unique(soft)) > 2
    hard = binary_mask(photo.parent / "hard" / "photo.car.mask.png", (72, 48))
    assert (soft[hard] >= 0.4 * 255 - 1).all() and (soft[~hard] <= 0.4 * 255 + 1).all()  # default threshold 0.4


def test_cutout_is_the_image_with_the_mask_as_alpha(photo: Path, weights: list[str]) -> None:
    done = clipseg("segment", photo, "car", *weights, "--cutout", "--json")
    assert done.code == 0, done.stderr
    [record] = done.records()
    assert Path(record["cutout"]) == photo.parent / "photo.car.cutout.png"
    cutout = pixels(record["cutout"], "RGBA", (72, 48))
    assert set(np.unique(cutout[..., 3])) <= {0, 255}
    assert ((cutout[..., 3] == 255) == binary_mask(record["mask"], (72, 48))).all()
    shown = cutout[..., 3] > 0
    assert (cutout[shown, :3] == np.asarray(Image.open(photo))[shown]).all() and (cutout[~shown, :3] == 0).all()


def test_an_example_image_is_a_prompt(photo: Path, weights: list[str]) -> None:
    reference = save(noise((30, 50), seed=7), photo.parent.parent / "ref.png")
    done = clipseg("segment", photo, "car", "--prompt-image", reference, *weights, "--json")
    assert done.code == 0, done.stderr
    [car, example] = done.records()
    assert (car["prompt"], Path(car["mask"]).name) == ("car", "photo.car.mask.png")
    assert example["prompt"] == "image ref" and re.fullmatch(r"photo\.image-ref-[0-9a-f]{6}\.mask\.png",
                                                             Path(example["mask"]).name)
    binary_mask(example["mask"], (72, 48))
    assert clipseg("segment", photo, "--prompt-image", reference, *weights, "--force").code == 0


def test_rerun_skips_what_exists_and_force_redoes_it(photo: Path, weights: list[str]) -> None:
    assert clipseg("segment", photo, "car", *weights).code == 0
    mask_path = photo.parent / "photo.car.mask.png"
    written = mask_path.stat().st_mtime_ns
    os.utime(mask_path, ns=(0, 0))  # a rerun that skips leaves the file alone
    again = clipseg("segment", photo, "car", *weights, "--json")
    assert again.code == 0, again.stderr
    [record] = again.records()
    assert record.keys() >= JSON_KEYS
    assert (record["status"], Path(record["mask"]), record["reason"]) == ("skipped", mask_path, None)
    assert "1 skipped" in again.stderr
    assert mask_path.stat().st_mtime_ns == 0 != written
    forced = clipseg("segment", photo, "car", *weights, "--json", "--force")
    assert [r["status"] for r in forced.records()] == ["ok"]
    assert mask_path.stat().st_mtime_ns != 0


# ---- batch: trees, stdin, prompt files, output folders inside the input --------------------------------------------


def test_batch_mirrors_the_input_tree_with_recursive(tmp_path: Path, weights: list[str]) -> None:
    tree = tmp_path / "in"
    sizes = {"a.png": (40, 30), "sub/b.jpg": (50, 44), "sub/deep/c.png": (36, 60)}
    for i, (name, size) in enumerate(sizes.items()):
        save(noise(size, seed=i), tree / name)
    (tree / "notes.txt").write_text("not an image")
    flat = clipseg("batch", tree, "-p", "car", "-o", tmp_path / "flat", *weights, "--no-overlay")
    assert flat.code == 0, flat.stderr
    assert names(tmp_path / "flat") == {"a.car.mask.png"}
    done = clipseg("batch", tree, "-p", "car", "-o", tmp_path / "out", *weights, "--recursive")
    assert done.code == 0, done.stderr
    expected = {f"{name.rsplit('.', 1)[0]}.car.{kind}.png" for name in sizes for kind in ("mask", "overlay")}
    assert names(tmp_path / "out") == expected
    for name, size in sizes.items():
        binary_mask(tmp_path / "out" / f"{name.rsplit('.', 1)[0]}.car.mask.png", size)


def test_batch_reads_paths_from_stdin(tmp_path: Path, weights: list[str]) -> None:
    first = save(noise((40, 40)), tmp_path / "a folder" / "one.png")
    second = save(noise((48, 32), seed=1), tmp_path / "two.jpg")
    done = clipseg("batch", "-", "-p", "car", "-o", tmp_path / "out", *weights, "--json",
                   stdin=f"{first}\n\n{second}\n")
    assert done.code == 0, done.stderr
    assert [(r["image"], r["status"]) for r in done.records()] == [(str(first), "ok"), (str(second), "ok")]
    binary_mask(tmp_path / "out" / "one.car.mask.png", (40, 40))
    binary_mask(tmp_path / "out" / "two.car.mask.png", (48, 32))


def test_prompts_file_skips_comments_and_blank_lines(photo: Path, tmp_path: Path, weights: list[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# things on the road\n\nred car\n   \n  tree  \n# dog\n", encoding="utf-8")
    done = clipseg("batch", photo, "-p", "sky", "--prompts-file", prompts, "-o", tmp_path / "out", *weights,
                   "--json", "--no-overlay")
    assert done.code == 0, done.stderr
    assert [r["prompt"] for r in done.records()] == ["sky", "red car", "tree"]
    assert names(tmp_path / "out") == {"photo.sky.mask.png", "photo.red-car.mask.png", "photo.tree.mask.png"}


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_outputs_inside_the_input_folder_are_never_taken_as_inputs(
    tmp_path: Path, weights: list[str], where: str
) -> None:
    tree = tmp_path / "in"
    save(noise((40, 30)), tree / "x.png")
    save(noise((30, 40), seed=1), tree / "sub" / "y.jpg")
    inputs = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    out = tree / "masks" if where == "inside" else tree
    command = ["batch", tree, "-p", "car", "-o", out, *weights, "--recursive", "--json", "--cutout"]
    first = clipseg(*command)
    assert first.code == 0, first.stderr
    written = names(tree)
    assert len(first.records()) == 2
    for forced in ([], ["--force"]):
        again = clipseg(*command, *forced)
        assert again.code == 0, again.stderr
        assert sorted(r["image"] for r in again.records()) == sorted(str(p) for p in inputs)
        assert {r["status"] for r in again.records()} == {"ok" if forced else "skipped"}
        assert names(tree) == written
    assert not [name for name in written if name.count(".car.") > 1]
    assert {p: p.read_bytes() for p in inputs} == inputs  # inputs never overwritten


def test_files_named_like_outputs_are_never_inputs(tmp_path: Path, weights: list[str]) -> None:
    """A shell glob over a folder with earlier outputs (`in/*.png`) takes only the images."""
    photo = save(noise((50, 40)), tmp_path / "photo.png")
    first = clipseg("batch", photo, "-p", "car", "-o", tmp_path, *weights, "--json")
    assert first.code == 0
    before = {path: path.read_bytes() for path in tmp_path.glob("photo.car.*.png")}
    again = clipseg("batch", *sorted(tmp_path.glob("*.png")), "-p", "car", "-o", tmp_path, *weights, "--json")
    assert again.code == 0
    assert [(r["image"], r["status"]) for r in again.records()] == [(str(photo), "skipped")]
    assert {path: path.read_bytes() for path in tmp_path.glob("photo.car.*.png")} == before
    assert not list(tmp_path.glob("*.mask.*.mask.png"))


# ---- bad inputs and good images of every kind -------------------------------------------------------------------


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming width x height, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def bad_inputs(folder: Path) -> list[Path]:
    """A non-image named .jpg, an empty file, a truncated JPEG and PNG, too many pixels, a PNG bomb."""
    jpeg = save(noise((64, 64), seed=3), folder / "whole.jpg", quality=90).read_bytes()
    png = save(noise((64, 64), seed=4), folder / "whole.png").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "whole.png").unlink()
    bad = {"text.jpg": b"these are notes, not a picture\n", "empty.png": b"",
           "truncated.jpg": jpeg[: len(jpeg) // 2], "truncated.png": png[: len(png) // 2]}
    paths = [folder / name for name in bad]
    for path, data in zip(paths, bad.values(), strict=True):
        path.write_bytes(data)
    paths.append(save(noise((200, 150), seed=5), folder / "large.png"))  # over --max-pixels 20000
    paths.append(png_bomb(folder / "bomb.png", 100_000, 100_000))
    return paths


def test_bad_inputs_are_reported_and_the_rest_of_the_batch_is_done(tmp_path: Path, weights: list[str]) -> None:
    folder = tmp_path / "in"
    good = [save(noise((40, 30)), folder / "good1.png"), save(noise((50, 40), seed=1), folder / "good2.jpg")]
    bad = bad_inputs(folder)
    done = clipseg("batch", folder, "-p", "car", "-p", "tree", "-o", tmp_path / "out", *weights, "--json",
                   "--max-pixels", "20000")
    assert done.code == 1
    assert "Traceback" not in done.stderr
    records = done.records()
    assert len(records) == 2 * (len(good) + len(bad))
    status = {(Path(r["image"]).name, r["prompt"]): r["status"] for r in records}
    prompts = ("car", "tree")
    assert status == {(p.name, prompt): "failed" if p in bad else "ok" for p in good + bad for prompt in prompts}
    for record in records:
        assert record.keys() >= JSON_KEYS
        if record["status"] == "failed":
            assert Path(record["image"]).name in record["error"]
            assert (record["mask"], record["overlay"]) == (None, None)
    errors = done.errors()
    assert len(errors) == len(bad)
    assert all(line.startswith(("error: ", "clipseg: ")) for line in done.stderr.splitlines())  # one line each
    for path in bad:
        assert len([line for line in errors if path.name in line]) == 1, path
    assert names(tmp_path / "out") == {f"good{i}.{p}.{kind}.png" for i in (1, 2) for p in ("car", "tree")
                                       for kind in ("mask", "overlay")}


def test_a_decompression_bomb_is_refused_under_the_default_limit(tmp_path: Path, weights: list[str]) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 100_000, 100_000)
    done = clipseg("segment", bomb, "car", *weights)
    assert done.code == 1
    assert done.errors() == [f"error: {bomb}: image is 100000x100000 = 10000000000 pixels, over the limit of "
                             "178956970 (raise it with --max-pixels)"]


def good_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of every kind Pillow hands us, with the upright (width, height) their masks must have."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: stored 64x40, upright 40x64
    save(noise((64, 40), seed=1), folder / "exif6.jpg", exif=exif)
    palette = noise((44, 36), seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save(palette, folder / "palette.png", transparency=0)
    save(noise((38, 42), seed=3).convert("LA"), folder / "la.png")
    save(noise((46, 30), seed=4).convert("RGBA"), folder / "rgba.png")
    save(noise((40, 48), seed=5).convert("CMYK"), folder / "cmyk.jpg")
    save(noise((52, 34), seed=6).convert("1"), folder / "one-bit.png")
    grey16 = np.random.default_rng(7).integers(0, 65536, (28, 45), dtype=np.uint16)
    save(Image.fromarray(grey16), folder / "grey16.png")
    frames = [Image.new("RGB", (50, 26), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    save(frames[0], folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save(noise((33, 41), seed=8), folder / "café au lait.png")
    save(noise((41, 33), seed=9), folder / "日本 画像.jpg")
    return {"exif6": (40, 64), "palette": (44, 36), "la": (38, 42), "rgba": (46, 30), "cmyk": (40, 48),
            "one-bit": (52, 34), "grey16": (45, 28), "animated": (50, 26), "café au lait": (33, 41),
            "日本 画像": (41, 33)}


def test_good_images_of_every_kind_get_masks_of_their_upright_size(tmp_path: Path, weights: list[str]) -> None:
    sizes = good_images(tmp_path / "in")
    done = clipseg("batch", tmp_path / "in", "-p", "car", "-o", tmp_path / "out", *weights, "--cutout", "--json")
    assert done.code == 0, done.stderr
    assert {r["status"] for r in done.records()} == {"ok"}
    assert len(done.records()) == len(sizes)
    for stem, size in sizes.items():
        binary_mask(tmp_path / "out" / f"{stem}.car.mask.png", size)
        pixels(tmp_path / "out" / f"{stem}.car.overlay.png", "RGB", size)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "in" / "exif6.jpg")).convert("RGB")
    exif_cutout = pixels(tmp_path / "out" / "exif6.car.cutout.png", "RGBA", (40, 64))
    seen = exif_cutout[..., 3] > 0  # colour is 0 under alpha 0 (no background leaks)
    assert seen.any() and (exif_cutout[seen][:, :3] == np.asarray(upright)[seen]).all()  # turned, not only resized
    gif_cutout = pixels(tmp_path / "out" / "animated.car.cutout.png", "RGBA", (50, 26))
    shown = gif_cutout[..., 3] > 0
    assert shown.any() and (gif_cutout[shown][:, :3] == (255, 0, 0)).all()  # the first frame


@pytest.mark.slow
def test_a_large_rotated_jpeg_decoded_at_reduced_scale_gets_a_full_size_mask(tmp_path: Path,
                                                                               weights: list[str]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = save(noise((400, 264)), tmp_path / "big.jpg", exif=exif)
    done = clipseg("segment", photo, "car", *weights, "--no-overlay", "--precision", "bf16")
    assert done.code == 0, done.stderr
    binary_mask(tmp_path / "big.car.mask.png", (264, 400))


# ---- usage and set-up errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "said"), [
    (["segment", "{photo}", "car", "--bogus"], "--bogus"),
    (["segment", "{photo}"], "at least one prompt"),
    (["segment", "{photo}", "car", "--threshold", "1.5"], "--threshold"),
    (["segment", "{photo}", "car", "--threshold", "-0.1"], "--threshold"),
    (["segment", "{photo}", "car", "--device", "nonsense"], "nonsense"),
    (["segment", "{photo}", "car", "--precision", "fp8"], "fp8"),
    (["batch", "{photo}", "-p", "car"], "--output-dir"),
    (["batch", "{photo}", "-o", "{out}"], "at least one prompt"),
    (["batch", "{photo}", "-p", "car", "-o", "{out}", "--prompts-file", "{out}/missing.txt"], "missing.txt"),
    (["frobnicate"], "frobnicate"),
])
def test_usage_errors_exit_2_and_write_nothing(photo: Path, weights: list[str], args: list[str], said: str) -> None:
    out = photo.parent.parent / "out"
    done = clipseg(*[arg.format(photo=photo, out=out) for arg in args], *weights)
    assert done.code == 2
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert names(photo.parent) == {"photo.png"} and not out.exists()


@pytest.mark.parametrize("weights_args", [
    ["--weights", "{tmp}/no-such-dir"],
    ["--weights", "clipseg-tests/never-cached", "--offline"],
    ["--weights", "clipseg-tests/never-cached"],  # HF_HUB_OFFLINE=1
])
def test_missing_weights_say_which_command_fetches_them(photo: Path, tmp_path: Path, weights_args: list[str]) -> None:
    done = clipseg("segment", photo, "car", *[arg.format(tmp=tmp_path) for arg in weights_args])
    assert done.code == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and "clipseg download-weights" in line
    assert names(photo.parent) == {"photo.png"}


@pytest.mark.parametrize("args", [
    ["segment", "{tmp}/missing.png", "car"],  # exit 1: an input failed
    ["segment", "{photo}", "car", "-o", "{photo}"],  # the output folder is a file: exit 1
    ["segment", "{photo}", "car", "--threshold", "7"],
    ["segment", "{photo}", "car", "--weights", "{tmp}/nowhere"],
    ["segment", "{photo}", "--prompt-image", "{tmp}/missing.png"],
    ["batch", "{tmp}/in", "-p", "car", "-o", "{tmp}/out", "--max-pixels", "20000"],
    ["download-weights", "not a model name"],
    ["download-weights", "--revision"],
])
def test_failures_never_show_a_traceback(photo: Path, tmp_path: Path, weights: list[str], args: list[str]) -> None:
    bad_inputs(tmp_path / "in")
    formatted = [arg.format(photo=photo, tmp=tmp_path) for arg in args]
    done = clipseg(*formatted, *(weights if args[0] != "download-weights" and "--weights" not in args else []))
    assert done.code in (1, 2)
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr
    assert done.stderr.strip()


def test_cli_runner_against_the_app(photo: Path, weights: list[str]) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["segment", str(photo), "car", *weights, "--json", "-q"])
    assert done.exit_code == 0, done.stderr
    assert [r["status"] for r in map(json.loads, done.stdout.splitlines())] == ["ok"]
    assert done.stderr == ""
    refused = runner.invoke(app, ["segment", str(photo), "car", *weights, "--threshold", "2"])
    assert refused.exit_code == 2
    assert "--threshold" in refused.stderr and refused.stdout == ""


# ---- download-weights, --version, --help --------------------------------------------------------------------------


def test_download_weights_list_shows_the_published_names_with_sizes() -> None:
    done = clipseg("download-weights", "--list")
    assert done.code == 0
    lines = done.stdout.splitlines()
    for name in ("CIDAS/clipseg-rd64-refined", "CIDAS/clipseg-rd64", "CIDAS/clipseg-rd16"):
        [line] = [line for line in lines if line.split()[0] == name]
        assert " MB" in line and line.split()[1].isdigit()
    assert done.stdout.count("(default)") == 1 and "(default)" in lines[0]


@pytest.mark.slow
def test_downloaded_weights_folder_is_loaded_by_segment(
    hub_server: FakeHub, checkpoint: Path, tmp_path: Path, photo: Path, weights: list[str]
) -> None:
    served = {p.name: p.read_bytes() for p in checkpoint.iterdir()} | {"pytorch_model.bin": b"never fetch me"}
    hub_server.add_revision("CIDAS/clipseg-rd64-refined", "main", served)
    target = tmp_path / "weights"
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(tmp_path / "cache"))
    env.pop("HF_HUB_OFFLINE")
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "download-weights", "--output-dir", str(target)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{target}\n"
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {k: v for k, v in served.items() if k.endswith(
        (".json", ".txt", ".safetensors"))}
    assert "pytorch_model.bin" not in hub_server.requested_files("GET")
    ours = clipseg("segment", photo, "car", "--weights", target, "-o", tmp_path / "ours", "--precision", "fp32")
    assert ours.code == 0, ours.stderr
    reference = clipseg("segment", photo, "car", *weights, "-o", tmp_path / "reference", "--precision", "fp32")
    assert reference.code == 0, reference.stderr
    assert (binary_mask(tmp_path / "ours" / "photo.car.mask.png", (72, 48))
            == binary_mask(tmp_path / "reference" / "photo.car.mask.png", (72, 48))).all()


def imported_modules(stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    rows = (line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:"))
    return {row.split(".")[0] for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["segment", "--help"], ["batch", "--help"]])
def test_version_and_help_do_not_import_torch(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipseg_cli", *args], env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "clipseg_cli" in imported_modules(done.stderr)
    assert not {"torch", "transformers"} & imported_modules(done.stderr)
    if args == ["--version"]:
        assert done.stdout == f"clipseg 0.1.0 (torch {version('torch')}, transformers {version('transformers')})\n"
    elif args == ["--help"]:
        assert all(command in done.stdout for command in ("segment", "batch", "download-weights"))
    else:
        assert "--weights" in done.stdout and "--threshold" in done.stdout


# ---- Ctrl-C and the rerun, in a real process ---------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_leaves_only_whole_files_and_a_rerun_does_the_rest(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "many"
    count = 150
    for i in range(count):
        save(noise((48, 40), seed=i), folder / f"img{i:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "clipseg_cli", "batch", str(folder), "-p", "red car", "-p", "tree", "-o",
               str(out), "--weights", str(checkpoint), "--json"]
    process, read_end = start_held(command)
    wait_until_held(process, read_end)  # 300 JSON lines do not fit: the run waits until the signal has landed
    process.send_signal(signal.SIGINT)
    reader, chunks = read_all(read_end)
    stderr = process.communicate(timeout=120)[1].decode()
    reader.join(timeout=60)
    stdout = chunks[0].decode()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    interrupted = Outcome(130, stdout, stderr).records()
    assert {r["status"] for r in interrupted} <= {"ok"}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    for png in out.glob("*.png"):  # every PNG there is whole
        with Image.open(png) as image:
            image.load()
    finished = len(list(out.glob("*.mask.png")))
    assert 0 < finished < 2 * count

    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, encoding="utf-8",
                           timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    records = Outcome(1, rerun.stdout, rerun.stderr).records()  # stdout holds only JSON lines
    assert len(records) == 2 * (count + 1)
    statuses = [r["status"] for r in records]
    assert statuses.count("failed") == 2 and statuses.count("skipped") >= len(interrupted)
    assert statuses.count("ok") + statuses.count("skipped") == 2 * count and "ok" in statuses
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{folder / 'broken.png'}: " in errors[0]
    assert "Traceback" not in rerun.stderr and "image(s) failed" in rerun.stderr
    for i in range(count):
        for prompt in ("red-car", "tree"):
            binary_mask(out / f"img{i:03d}.{prompt}.mask.png", (48, 40))
            pixels(out / f"img{i:03d}.{prompt}.overlay.png", "RGB", (48, 40))


def test_output_dir_that_is_a_file_is_a_usage_error(tmp_path: Path, weights: list[str]) -> None:
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    blocker = tmp_path / "masks"
    blocker.write_text("not a folder")
    for command in (["segment", photo, "car"], ["batch", photo, "-p", "car"]):
        done = clipseg(*command, "-o", blocker, *weights)
        assert done.code == 2
        assert done.errors() == [f"error: --output-dir {blocker}: exists and is not a folder; choose another"]


def test_masks_are_the_same_with_and_without_statistics(tmp_path: Path, weights: list[str]) -> None:
    """Without --json the mask is thresholded on logits (no full-size sigmoid): same pixels."""
    photo = save(noise((90, 70), seed=4), tmp_path / "photo.png")
    for out, extra in ((tmp_path / "plain", []), (tmp_path / "json", ["--json"])):
        assert clipseg("segment", photo, "red car", "tree", "-o", out, "--no-overlay", *weights, *extra).code == 0
    for label in ("red-car", "tree"):
        plain = binary_mask(tmp_path / "plain" / f"photo.{label}.mask.png", (90, 70))
        assert 0 < plain.mean() < 1
        assert np.array_equal(plain, binary_mask(tmp_path / "json" / f"photo.{label}.mask.png", (90, 70)))


@pytest.mark.slow
def test_missing_weights_are_fetched_on_first_use_then_work_offline(
    hub_server: FakeHub, checkpoint: Path, tmp_path: Path, photo: Path
) -> None:
    served = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    hub_server.add_revision("CIDAS/clipseg-rd16", "main", served)
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(tmp_path / "cache"))
    env.pop("HF_HUB_OFFLINE")
    command = [sys.executable, "-m", "clipseg_cli", "segment", str(photo), "car", "--weights", "rd16", "--json",
               "-o", str(tmp_path / "out")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["status"] for line in first.stdout.splitlines()] == ["ok"]
    assert "model.safetensors" in hub_server.requested_files("GET")
    hub_server.stop()  # from now on only the cache can serve
    again = subprocess.run([*command, "--force", "--offline"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == ["ok"]


@pytest.mark.slow
def test_importing_the_library_leaves_the_environment_alone() -> None:
    """Only the command line sets OMP_WAIT_POLICY (for torch's threads); a notebook's `import` does not."""
    probe = ("import os, clipseg_cli; from clipseg_cli import Segmenter; print(os.environ.get('OMP_WAIT_POLICY')); "
             "from clipseg_cli.cli import main; main(['--version']); print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {key: value for key, value in subprocess_env().items() if key != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "None" and done.stdout.splitlines()[-1] == "PASSIVE"
