"""Both checkpoint layouts load and equal the reference; what a checkpoint lacks or gets wrong is a set-up error.

The published (2022) layout: preprocessor_config.json, vocab.json + merges.txt. Today's ``save_pretrained``:
processor_config.json with the preprocessing nested under ``image_processor``, tokenizer.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipseg_cli import Segmenter, load_model
from clipseg_cli.cli import main
from clipseg_cli.errors import CheckpointError
from factory import Reference, assert_prompts_differ, build_checkpoint, probe_image, save_modern_layout

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

TEXTS = ["red car", "tree", "Zürich 犬 <|endoftext|>"]  # the last: bytes and a special token
EXAMPLES = [probe_image(10, (40, 40)), probe_image(11, (90, 30))]
IMAGE_SIZES = [(70, 50), (33, 91), (300, 200)]  # (width, height)
TOLERANCE = 1e-4  # max absolute difference of probabilities, at fp32


@pytest.fixture(scope="module")
def modern(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session checkpoint, saved again by today's transformers."""
    return save_modern_layout(checkpoint, tmp_path_factory.mktemp("modern"))


@pytest.fixture(scope="module")
def modern96(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint made for 96x96 inputs (not the toy default 64), in today's layout."""
    published = build_checkpoint(tmp_path_factory.mktemp("published96"), "plain", size=96)
    directory = save_modern_layout(published, tmp_path_factory.mktemp("modern96"))
    assert_prompts_differ(directory)
    return directory


def copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def cli_error(directory: Path, tmp_path: Path) -> tuple[int, list[str]]:
    """Run ``clipseg segment`` with these weights: (exit code, stderr lines); no mask may be written."""
    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    with CliRunner().isolation() as (_, stderr, _):
        code = main(["segment", str(photo), "car", "--weights", str(directory), "-o", str(tmp_path / "out")])
        sys.stderr.flush()
        lines = stderr.getvalue().decode().splitlines()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return code, lines


def test_fixtures_have_the_two_layouts(checkpoint, modern):
    def names(directory):
        return {path.name for path in directory.iterdir()}

    assert {"preprocessor_config.json", "vocab.json", "merges.txt"} <= names(checkpoint)
    assert not {"tokenizer.json", "processor_config.json"} & names(checkpoint)
    assert {"processor_config.json", "tokenizer.json"} <= names(modern)
    assert not {"preprocessor_config.json", "vocab.json", "merges.txt"} & names(modern)
    nested = json.loads((modern / "processor_config.json").read_text())["image_processor"]
    assert nested["size"] == {"height": 64, "width": 64}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["checkpoint", "modern", "modern96"])
def test_layout_matches_reference_pipeline(layout, request):
    """Text and image prompts, on images of three shapes, equal transformers' pipeline for the same folder."""
    directory = request.getfixturevalue(layout)
    reference = Reference(directory)
    segmenter = Segmenter.from_pretrained(directory, device="cpu", precision="fp32")
    height, width = segmenter.preprocessing.size
    assert reference.processor.image_processor.size == {"height": height, "width": width}
    for seed, size in enumerate(IMAGE_SIZES):
        image = probe_image(seed, size)
        got = segmenter.predict(image, [*TEXTS, *EXAMPLES])
        difference = np.abs(got - reference.probabilities(image, [*TEXTS, *EXAMPLES])).max()
        assert difference < TOLERANCE, f"{layout}, {size} image: max difference {difference:.2g}"


def test_checkpoint_saved_at_another_size_runs_at_that_size(modern96):
    segmenter = Segmenter.from_pretrained(modern96, device="cpu", precision="fp32")
    assert segmenter.preprocessing.size == (96, 96)
    assert segmenter.logits([probe_image(0)], TEXTS).shape == (1, len(TEXTS), 96, 96)


# (file to edit, change, what the error says): settings the reference honours are honoured
HONOURED: list[tuple[str, dict]] = [
    ("preprocessor_config.json", {"resample": 3}),  # bicubic
    ("preprocessor_config.json", {"resample": 0}),  # nearest
    ("preprocessor_config.json", {"size": 48}),  # one number: a square
    ("preprocessor_config.json", {"image_mean": [0.3, 0.5, 0.7], "image_std": [0.2, 0.3, 0.4]}),
    ("preprocessor_config.json", {"image_mean": 0.4, "image_std": 0.3}),  # one number for all channels
    ("preprocessor_config.json", {"rescale_factor": 1 / 127.5}),
    ("preprocessor_config.json", {"do_normalize": False}),
    ("preprocessor_config.json", {"do_rescale": False}),
    ("preprocessor_config.json", {"image_mean": None, "image_std": None, "resample": None}),  # ViT's defaults
    ("processor_config.json", {"resample": 3, "size": {"height": 80, "width": 80}}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "settings"), HONOURED, ids=[str(s) for _, s in HONOURED])
def test_preprocessing_settings_are_honoured(checkpoint, modern, tmp_path, name, settings):
    """Each setting of the image processor changes our maps exactly as it changes the reference's."""
    source = modern if name == "processor_config.json" else checkpoint
    directory = copy(source, tmp_path / "edited")

    def change(raw: dict) -> None:
        target = raw["image_processor"] if name == "processor_config.json" else raw
        for key, value in settings.items():
            target.pop(key) if value is None else target.update({key: value})

    edit_json(directory / name, change)
    reference = Reference(directory)
    image = probe_image(0, IMAGE_SIZES[2])
    got = Segmenter.from_pretrained(directory, device="cpu", precision="fp32").predict(image, [TEXTS[0], EXAMPLES[0]])
    assert np.abs(got - reference.probabilities(image, [TEXTS[0], EXAMPLES[0]])).max() < TOLERANCE


@pytest.mark.parametrize("layout", ["checkpoint", "modern"])
def test_missing_preprocessing_is_a_setup_error(layout, request, tmp_path):
    directory = copy(request.getfixturevalue(layout), tmp_path / "bare")
    (directory / "preprocessor_config.json").unlink(missing_ok=True)
    if layout == "modern":  # a processor_config.json without image settings does not count
        edit_json(directory / "processor_config.json", lambda raw: raw.pop("image_processor"))
    code, lines = cli_error(directory, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {directory}: no preprocessing")
    assert "preprocessor_config.json" in lines[0] and "processor_config.json" in lines[0]


@pytest.mark.parametrize(("layout", "files"), [("checkpoint", ["vocab.json", "merges.txt"]),
                                               ("checkpoint", ["merges.txt"]),
                                               ("modern", ["tokenizer.json"])])
def test_missing_tokenizer_is_a_setup_error(layout, files, request, tmp_path):
    """Without its vocabulary the tokenizer would map every prompt to the same tokens: never run that."""
    directory = copy(request.getfixturevalue(layout), tmp_path / "bare")
    for name in files:
        (directory / name).unlink()
    code, lines = cli_error(directory, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {directory}: no tokenizer")
    assert all(name in lines[0] for name in ("tokenizer.json", "vocab.json", "merges.txt"))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "tokenizer.json").write_text("{not json"), "cannot read the tokenizer files"),
    (lambda d: edit_json(d / "config.json", lambda c: c["text_config"].update(vocab_size=500)),
     r"the tokenizer \(522 tokens\) does not fit the text tower \(500 tokens\)"),
])
def test_unusable_tokenizer_is_refused(modern, tmp_path, damage, message):
    directory = copy(modern, tmp_path / "bad")
    damage(directory)
    with pytest.raises(CheckpointError, match=message) as info:
        Segmenter.from_pretrained(directory, device="cpu", precision="fp32")
    assert str(info.value).startswith(str(directory)) and "\n" not in str(info.value)


def test_disagreeing_preprocessing_files_are_refused(checkpoint, modern, tmp_path):
    directory = copy(modern, tmp_path / "both")
    shutil.copy(checkpoint / "preprocessor_config.json", directory)
    Segmenter.from_pretrained(directory, device="cpu", precision="fp32")  # the same settings twice: fine
    edit_json(directory / "processor_config.json", lambda raw: raw["image_processor"].update(resample=3))
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json and processor_config\.json describe"):
        Segmenter.from_pretrained(directory, device="cpu", precision="fp32")


# (change to preprocessor_config.json, what the error says)
BAD_PREPROCESSING: list[tuple[dict, str]] = [
    ({"size": 0}, "size height 0 must be a whole number from 1 to 4096"),
    ({"size": {"height": -64, "width": 64}}, "size height -64 must be"),
    ({"size": {"height": 64, "width": 64.5}}, "size width 64.5 must be"),
    ({"size": "64"}, "size '64' is not supported"),
    ({"size": 100000}, "from 1 to 4096 .larger inputs need gigabytes"),
    ({"size": {"shortest_edge": 64}}, "give {\"height\": H, \"width\": W}"),
    ({"size": 8}, r"input size 8x8 of its preprocessing is smaller than one patch \(16 pixels"),
    ({"resample": 99}, r"resample 99 is not one of 0 \(nearest\), 1 \(lanczos\), 2 \(bilinear\)"),
    ({"resample": "bilinear"}, "resample 'bilinear' is not one of"),
    ({"do_resize": False}, "do_resize false is not supported"),
    ({"do_normalize": "yes"}, "do_normalize must be true or false"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be three numbers"),
    ({"image_std": [0.0, 0.2, 0.2]}, "image_std must be positive"),
    ({"rescale_factor": 0}, "rescale_factor must be a positive number"),
    ({"image_processor_type": "CLIPImageProcessor"}, "image_processor_type 'CLIPImageProcessor' is not supported"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_PREPROCESSING, ids=[str(s) for s, _ in BAD_PREPROCESSING])
def test_bad_preprocessing_is_refused_naming_the_file(checkpoint, tmp_path, settings, message):
    directory = copy(checkpoint, tmp_path / "bad")
    edit_json(directory / "preprocessor_config.json", lambda raw: raw.update(settings))
    with pytest.raises(CheckpointError, match=message) as info:
        Segmenter.from_pretrained(directory, device="cpu", precision="fp32")
    assert str(directory) in str(info.value) and "\n" not in str(info.value)
    if "size" not in settings or settings["size"] == 8:
        return
    assert str(directory / "preprocessor_config.json") in str(info.value)


@pytest.mark.parametrize("size", [0, 100000])
def test_bad_size_exits_2_in_one_line(checkpoint, modern, tmp_path, size):
    directory = copy(modern, tmp_path / "bad")
    edit_json(directory / "processor_config.json", lambda raw: raw["image_processor"].update(size=size))
    code, lines = cli_error(directory, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {directory / 'processor_config.json'}: size height {size} must be")


# (change to config.json, what the error says)
BAD_CONFIG: list[tuple[Callable[[dict], None], str]] = [
    (lambda c: c["vision_config"].update(patch_size="16"), "vision_config.patch_size must be a positive integer, got"),
    (lambda c: c["vision_config"].update(image_size=0), "vision_config.image_size must be a positive integer, got 0"),
    (lambda c: c["vision_config"].update(num_channels=1), "vision_config.num_channels must be 3"),
    (lambda c: c["vision_config"].update(hidden_size=50), "vision_config.hidden_size 50 is not divisible by 4"),
    (lambda c: c["vision_config"].update(layer_norm_eps="1e-5"), "vision_config.layer_norm_eps must be a small"),
    (lambda c: c["text_config"].update(vocab_size=-1), "text_config.vocab_size must be a positive integer, got -1"),
    (lambda c: c["text_config"].update(max_position_embeddings=32.0), "text_config.max_position_embeddings must"),
    (lambda c: c["text_config"].update(eos_token_id="2"), "text_config.eos_token_id must be a token id"),
    (lambda c: c.update(vision_config=[1, 2]), "vision_config must be a JSON object"),
    (lambda c: c.update(extract_layers=3), "extract_layers must be a list of layer indices"),
    (lambda c: c.update(conditional_layer=True), "conditional_layer True must be in"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIG, ids=[m.split(" must")[0] for _, m in BAD_CONFIG])
def test_bad_config_values_are_refused_naming_the_file(checkpoint, tmp_path, change, message):
    directory = copy(checkpoint, tmp_path / "bad")
    edit_json(directory / "config.json", change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(directory)
    assert str(info.value).startswith(str(directory / "config.json")) and "\n" not in str(info.value)


def test_config_value_of_wrong_type_exits_2_in_one_line(checkpoint, tmp_path):
    directory = copy(checkpoint, tmp_path / "bad")
    edit_json(directory / "config.json", lambda c: c["vision_config"].update(patch_size="16"))
    code, lines = cli_error(directory, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {directory / 'config.json'}: vision_config.patch_size must be")
