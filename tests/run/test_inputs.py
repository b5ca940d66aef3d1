"""Odd inputs, prompts and output folders: each is taken once, named stably, or refused in one line before any work.

Through the real entry point (``clipseg_cli.cli.main``, and one real process); `collect` directly where only
naming is at stake. Set-up errors run with ``--weights /nonexistent``: the error they show proves that the
check came before the model was loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image

import clipseg_cli
from clipseg_cli.run.inputs import _stems, collect
from helpers import binary_mask, clipseg, names, noise, pixels, save, subprocess_env

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

NO_WEIGHTS = ["--weights", "/nonexistent"]  # a set-up error must come before the model is looked for


def files(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under a folder; links are neither followed nor listed."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in folder.rglob("*") if not p.is_symlink()}


def one_error(done, *said: str) -> str:
    """The run's only error line, after checking that it names each of ``said``."""
    [line] = done.errors()
    assert all(part in line for part in said), line
    return line


def setup_error(done, *said: str) -> str:
    """Check a set-up error: exit 2, nothing on stdout, one line on stderr naming each of ``said``."""
    assert done.code == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    return one_error(done, *said)


# ---- prompts: --prompts-file, --template, undecodable bytes (items 5, 13) ----------------------------------------


def test_prompts_file_with_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path, weights: list[str]) -> None:
    """Notepad's UTF-8: a BOM before a first-line comment, CRLF line ends."""
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeff# things on the road\r\nred car\r\n\r\n  tree \r\n# dog\r\n".encode())
    done = clipseg("batch", photo, "--prompts-file", prompts, "-o", tmp_path / "out", *weights, "--json",
                   "--no-overlay")
    assert done.code == 0, done.stderr
    assert [r["prompt"] for r in done.records()] == ["red car", "tree"]
    assert names(tmp_path / "out") == {"photo.red-car.mask.png", "photo.tree.mask.png"}


def test_a_template_keeps_braces_other_than_the_placeholder_as_text(tmp_path: Path, weights: list[str]) -> None:
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    templated = clipseg("segment", photo, "car", "--template", "{x} a {}", "-o", tmp_path / "t", *weights, "--soft",
                        "--no-overlay")
    assert templated.code == 0, templated.stderr
    plain = clipseg("segment", photo, "{x} a car", "-o", tmp_path / "p", *weights, "--soft", "--no-overlay")
    assert plain.code == 0, plain.stderr
    [ours], [reference] = (list((tmp_path / folder).iterdir()) for folder in ("t", "p"))
    assert np.array_equal(pixels(ours, "L", (40, 30)), pixels(reference, "L", (40, 30)))


@pytest.mark.parametrize("template", ["a photo", "{}{}", "{0}"])
def test_a_template_without_exactly_one_placeholder_is_a_set_up_error(tmp_path: Path, template: str) -> None:
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    done = clipseg("segment", photo, "car", "--template", template, *NO_WEIGHTS)
    setup_error(done, f"--template {template!r}", "exactly once")
    assert names(tmp_path) == {"photo.png"}


@pytest.mark.parametrize(("args", "option"), [
    (["dog\udcff"], "prompt"),
    (["-p", "d\udce9g"], "prompt"),
    (["car", "-n", "tree\udcff"], "--negative"),
    (["car", "--template", "a {} \udcff"], "--template"),
])
def test_a_prompt_with_an_undecodable_byte_is_a_set_up_error(tmp_path: Path, args: list[str], option: str) -> None:
    """Arguments that are not UTF-8 reach Python as surrogate escapes (\\udcff for the byte 0xff)."""
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    command = ["batch", photo, "-o", tmp_path / "out"] if args[0] == "-p" else ["segment", photo]
    done = clipseg(*command, *args, *NO_WEIGHTS)
    bad = next(arg for arg in args if not arg.isascii())
    shown = bad.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    setup_error(done, f'{option} "{shown}"', "UTF-8")
    assert names(tmp_path) == {"photo.png"}


@pytest.mark.slow
def test_a_non_utf8_argument_byte_is_refused_by_the_real_program(tmp_path: Path) -> None:
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    source = Path(clipseg_cli.__file__).parents[1]
    done = subprocess.run([sys.executable, "-m", "clipseg_cli", "segment", str(photo), b"dog\xff", *NO_WEIGHTS],
                          env=subprocess_env(PYTHONPATH=str(source)), capture_output=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        'error: prompt "dog\\xff" is not valid UTF-8 (the bad bytes are shown as \\xNN); '
        "give it as UTF-8 text (check the terminal's or the script's encoding)"]
    assert names(tmp_path) == {"photo.png"}


# ---- inputs are never overwritten, also through links (item 6) ---------------------------------------------------


@pytest.mark.parametrize("alias", ["symlinked folder", "hard link"])
def test_an_output_never_replaces_a_prompt_mask_reached_through_another_name(
    tmp_path: Path, weights: list[str], alias: str
) -> None:
    photo = save(noise((50, 40)), tmp_path / "photo.png")
    ref = save(noise((50, 40), seed=1), tmp_path / "ref.png")
    mask = Image.new("L", (50, 40), 0)
    mask.paste(255, (10, 10, 30, 30))
    scout = save(mask, tmp_path / "scout" / "m.png")
    first = clipseg("segment", photo, "--prompt-image", ref, "--prompt-mask", scout, "-o", tmp_path / "scout",
                    *weights, "--json")
    output_name = Path(first.records()[0]["mask"]).name  # the name the outputs get: the mask takes it
    kept = tmp_path / "kept"
    if alias == "symlinked folder":
        prompt_mask = save(mask, kept / output_name)
        (tmp_path / "link").symlink_to(kept)
        out = tmp_path / "link"
    else:
        prompt_mask = save(mask, tmp_path / "m.png")
        kept.mkdir()
        os.link(prompt_mask, kept / output_name)
        out = kept
    before = files(tmp_path / "kept") | {"m": prompt_mask.read_bytes()}
    done = clipseg("segment", photo, "--prompt-image", ref, "--prompt-mask", prompt_mask, "-o", out, *weights,
                   "--json")
    assert done.code == 1
    assert files(tmp_path / "kept") | {"m": prompt_mask.read_bytes()} == before
    [record] = done.records()
    assert record["status"] == "failed" and output_name in record["error"]
    one_error(done, output_name, "would overwrite an input")


# ---- output folders are checked before the model loads (item 14) --------------------------------------------------


def read_only(folder: Path) -> None:
    """Make a folder refuse new files, also to root (immutable flag); skip where that cannot be done."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root: permission bits do not stop it
        flagged = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if flagged.returncode != 0:
            folder.chmod(0o755)
            pytest.skip(f"cannot make a folder read-only as root here (chattr: {flagged.stderr.decode().strip()})")


def writable(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


@pytest.mark.parametrize("case", ["read-only", "read-only parent", "inside a file", "dangling link",
                                  "mirrored folder is a file", "beside a read-only image"])
def test_an_output_folder_that_cannot_be_written_is_a_set_up_error(tmp_path: Path, case: str) -> None:
    tree = tmp_path / "in"
    photo = save(noise((40, 30)), tree / "sub" / "photo.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    command, out, lock = ["batch", tree, "-r", "-p", "car", "-o"], tmp_path / "out", None
    if case == "read-only":
        out, lock, said = locked, locked, f"--output-dir {locked}: cannot write in {locked}"
    elif case == "read-only parent":
        out, lock, said = locked / "new" / "masks", locked, f"cannot write in {locked}"
    elif case == "inside a file":
        out, said = photo / "masks", f"--output-dir {photo / 'masks'}: {photo} is a file, not a folder"
    elif case == "dangling link":
        out.symlink_to(tmp_path / "nowhere")
        said = f"--output-dir {out}: {out} is a broken symbolic link"
    elif case == "mirrored folder is a file":
        out.mkdir()
        (out / "sub").write_text("in the way")
        said = f"output folder {out / 'sub'}: exists and is not a folder"
    else:
        command, out, lock = ["segment", photo, "car"], None, photo.parent
        said = f"output folder {photo.parent}: cannot write in {photo.parent}"
    if lock:
        read_only(lock)
    try:
        before = files(tmp_path)
        done = clipseg(*command, *([out] if out else []), *NO_WEIGHTS)
        setup_error(done, said)
        assert files(tmp_path) == before
    finally:
        if lock:
            writable(lock)


def test_blur_inf_is_a_set_up_error_before_the_model_loads(tmp_path: Path) -> None:
    photo = save(noise((40, 30)), tmp_path / "photo.png")
    setup_error(clipseg("segment", photo, "car", "--blur", "inf", *NO_WEIGHTS), "blur")


# ---- each file once, stable names, arguments that would do nothing (items 11, 16) --------------------------------


def test_each_file_is_processed_once_at_its_first_mention(tmp_path: Path, weights: list[str]) -> None:
    tree = tmp_path / "in"
    first, second = save(noise((40, 30)), tree / "a.png"), save(noise((30, 40), seed=1), tree / "b.jpg")
    (tmp_path / "alias.png").symlink_to(first)
    stdin = f"{second}\n{second}\n{tmp_path / 'alias.png'}\n"
    done = clipseg("batch", tree, first, tmp_path / "alias.png", "-", f"{tree}/./b.jpg", "-p", "car",
                   "-o", tmp_path / "out", *weights, "--json", "--no-overlay", stdin=stdin)
    assert done.code == 0, done.stderr
    assert [(r["image"], r["status"]) for r in done.records()] == [(str(first), "ok"), (str(second), "ok")]
    assert names(tmp_path / "out") == {"a.car.mask.png", "b.car.mask.png"}


def test_a_missing_path_does_not_rename_a_good_files_outputs(tmp_path: Path, weights: list[str]) -> None:
    good = save(noise((40, 30)), tmp_path / "a.jpg")
    missing = tmp_path / "x" / "a.jpg"
    done = clipseg("batch", "-", "-p", "car", "-o", tmp_path / "out", *weights, "--json", "--no-overlay",
                   stdin=f"{missing}\n{good}\n")
    assert done.code == 1
    assert [(r["image"], r["status"]) for r in done.records()] == [(str(missing), "failed"), (str(good), "ok")]
    one_error(done, str(missing))
    assert names(tmp_path / "out") == {"a.car.mask.png"}
    binary_mask(tmp_path / "out" / "a.car.mask.png", (40, 30))


def test_names_of_inputs_that_share_a_stem(tmp_path: Path) -> None:
    paths = [save(noise((8, 8)), tmp_path / name) for name in ("x/a.jpg", "y/a.jpg", "a_jpg-2.png", "b.png",
                                                                 "b.jpg", "z/a.jpg")]
    items = collect([str(p) for p in [*paths, tmp_path / "gone" / "b.png"]], output_dir=tmp_path / "out")
    assert [item.stem for item in items] == ["a_jpg", "a_jpg-2", "a_jpg-2-2", "b_png", "b_jpg", "a_jpg-3", "b"]


def test_twenty_thousand_inputs_with_one_name_are_named_in_linear_time(tmp_path: Path) -> None:
    """`find / -name a.jpg | clipseg batch - -o masks`: naming took 149 s when it was quadratic (each name tried
    -2, -3, ... from the start). Counted, not timed: the names taken are looked up at most twice per input.

    The paths need not exist: missing files are named (after the others) by the same rule.
    """
    count = 20_000
    lines = [f"{tmp_path / f'{i:05d}' / 'a.jpg'}\n" for i in range(count)]
    items = collect(["-"], output_dir=tmp_path / "out", stdin=lines)
    assert [item.stem for item in items] == ["a_jpg"] + [f"a_jpg-{n}" for n in range(2, count + 1)]

    class Counted(set):
        lookups = 0

        def __contains__(self, key: object) -> bool:
            Counted.lookups += 1
            return super().__contains__(key)

    out = PurePath("out")
    assert _stems([(PurePath(line.strip()), out) for line in lines], Counted()) == [item.stem for item in items]
    assert Counted.lookups <= 2 * count, f"{Counted.lookups} look-ups to name {count} inputs"


@pytest.mark.parametrize(("args", "said"), [
    (["segment", "-", "car"], "use `clipseg batch - -p PROMPT -o DIR`"),
    (["segment", "{tmp}/x.car.mask.png", "car"], "x.car.mask.png is an output of clipseg"),
    (["segment", "", "car"], 'the image path is empty ("")'),
    (["batch", "", "-p", "car", "-o", "{tmp}/out"], 'an input is an empty path ("")'),
    (["segment", "{tmp}/in/photo.png", "car", "-o", ""], '--output-dir "" is empty'),
    (["batch", "{tmp}/in", "-p", "car", "-o", ""], '--output-dir "" is empty'),
    (["batch", "{tmp}/empty", "-p", "car", "-o", "{tmp}/out"], "no images to process in"),
    (["batch", "{tmp}/x.car.mask.png", "-p", "car", "-o", "{tmp}/out"], "no images to process in"),
    (["batch", "{tmp}", "-p", "car", "-o", "{tmp}/out"], "add -r to walk subfolders"),
])
def test_arguments_that_would_do_nothing_are_set_up_errors(tmp_path: Path, args: list[str], said: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    save(noise((40, 30)), tmp_path / "in" / "photo.png")
    save(noise((40, 30)), tmp_path / "x.car.mask.png")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "in")  # "" and "." are this folder: it must stay untouched
    before = files(tmp_path)
    done = clipseg(*[arg.format(tmp=tmp_path) for arg in args], *NO_WEIGHTS, stdin="")
    setup_error(done, said)
    assert files(tmp_path) == before


def test_an_empty_stdin_is_nothing_to_do(tmp_path: Path) -> None:
    """`find ... -newer stamp | clipseg batch -` finding nothing is a normal day: exit 0, no model load."""
    done = clipseg("batch", "-", "-p", "car", "-o", tmp_path / "out", *NO_WEIGHTS, stdin="\n")
    assert (done.code, done.stdout, done.stderr) == (0, "", "clipseg: no paths on stdin; nothing to do\n")
    assert clipseg("batch", "-", "-p", "car", "-o", tmp_path / "out", "-q", *NO_WEIGHTS, stdin="").stderr == ""
    assert not (tmp_path / "out").exists()



def test_a_file_name_that_is_not_utf8_is_read_from_stdin(tmp_path: Path, weights: list[str]) -> None:
    """`find` prints names as their bytes; a Latin-1 name must reach the file, not stop the run."""
    photo = save(noise((40, 30)), tmp_path / os.fsdecode(b"caf\xe9.png"))
    done = clipseg("batch", "-", "-p", "car", "-o", tmp_path / "out", *weights, "--no-overlay",
                   stdin=os.fsencode(photo) + b"\n")
    assert done.code == 0, done.stderr
    binary_mask(tmp_path / "out" / os.fsdecode(b"caf\xe9.car.mask.png"), (40, 30))
