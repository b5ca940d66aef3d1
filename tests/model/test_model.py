"""The core contract: our ClipSeg gives transformers' CLIPSegForImageSegmentation logits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from clipseg_cli import ClipSegError, Segmenter, load_model
from clipseg_cli.errors import CheckpointError
from clipseg_cli.predictor import probabilities
from clipseg_cli.run.engine import Engine, Pipeline
from clipseg_cli.run.inputs import WorkItem
from clipseg_cli.run.outputs import OutputPlan
from clipseg_cli.run.targets import Targets
from factory import CONFIGS, Reference, assert_prompts_differ, build_checkpoint, probe_image

PROMPTS = ["red car", "tree", "a dog on the left"]
# (width, height) of the images compared with the reference: the 300x200 one is shrunk, so the filter matters
IMAGE_SIZES = [(70, 50), (33, 91), (300, 200)]
EXAMPLES = [probe_image(10, (40, 40)), probe_image(11, (90, 30))]  # image prompts
TOLERANCE = 1e-4  # max absolute difference of probabilities, at fp32


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(70, 50), (40, 64), (64, 64), (33, 91)]
    return [Image.fromarray(rng.integers(0, 256, (sizes[i % 4][1], sizes[i % 4][0], 3), dtype=np.uint8))
            for i in range(count)]


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(our model, the reference model, its processor, the checkpoint folder) for one small checkpoint."""
    directory = build_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    assert_prompts_differ(directory)
    reference = CLIPSegForImageSegmentation.from_pretrained(directory).eval()
    return load_model(directory), reference, CLIPSegProcessor.from_pretrained(directory), directory


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 3])
def test_text_prompts_match_reference(pair, count):
    ours, reference, processor, _ = pair
    inputs = processor(text=PROMPTS[:count], images=random_images(count), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = ours(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                   attention_mask=inputs["attention_mask"])
    assert got.shape == (count, 64, 64)  # B = 1 stays 1
    assert relative_error(got, expected) < 1e-5


@pytest.mark.slow
def test_image_prompts_match_reference(pair):
    ours, reference, processor, _ = pair
    images = random_images(2)
    inputs = processor(images=images, visual_prompt=random_images(2, seed=1), return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = ours(**inputs)
    assert relative_error(got, expected) < 1e-5


def test_text_prompts_stop_at_deepest_extracted_layer(pair):
    ours, _, processor, _ = pair
    ran = []
    hooks = [layer.register_forward_hook(lambda *_, i=i: ran.append(i))
             for i, layer in enumerate(ours.vision.encoder.layers)]
    try:
        ours.encode_image(processor(images=random_images(1), return_tensors="pt")["pixel_values"])
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == list(range(max(ours.config.extract_layers) + 1))


def assert_matches(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.dtype == np.float32 and got.shape == expected.shape, what
    difference = float(np.abs(got - expected).max())
    assert difference < TOLERANCE, f"{what}: max difference {difference:.2g} from the reference pipeline"


@pytest.mark.slow
def test_segmenter_matches_reference_pipeline(pair):
    """Text and image prompts, one image at a time and three at once, equal transformers' pipeline."""
    *_, directory = pair
    reference = Reference(directory)
    segmenter = Segmenter.from_pretrained(directory, device="cpu", precision="fp32")
    images = [probe_image(i, size) for i, size in enumerate(IMAGE_SIZES)]
    prompts = [*PROMPTS, *EXAMPLES]
    expected = [reference.probabilities(image, prompts) for image in images]
    for image, want in zip(images, expected, strict=True):
        assert_matches(segmenter.predict(image, prompts), want, f"predict, {image.size} image")
    for image, logits, want in zip(images, segmenter.logits(images, prompts), expected, strict=True):
        assert_matches(probabilities(logits, image.size), want, f"logits of a batch of 3, {image.size} image")
    single = segmenter.predict(np.asarray(images[0]), "tree")
    assert single.shape == (1, images[0].height, images[0].width)
    np.testing.assert_allclose(single[0], expected[0][1], atol=TOLERANCE)


@pytest.mark.slow
def test_engine_batches_match_reference_pipeline(checkpoint, tmp_path):
    """Masks and statistics written by the batch engine (3 images a batch) follow the reference maps."""
    paths = []
    for i, size in enumerate(IMAGE_SIZES):
        paths.append(tmp_path / f"image{i}.png")
        probe_image(i, size).save(paths[-1])
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    engine = Engine(segmenter, Targets.build(PROMPTS, plan=OutputPlan(overlay=False)), Pipeline(batch_size=3))
    results = list(engine.process([WorkItem(path, tmp_path / "out", path.stem) for path in paths]))
    assert [r.status for r in results] == ["ok"] * len(paths) * len(PROMPTS)
    reference = Reference(checkpoint)
    for result in results:
        image = Image.open(result.image).convert("RGB")
        want = reference.probabilities(image, [result.prompt])[0]
        mask = np.asarray(Image.open(result.mask)) == 255
        settled = np.abs(want - 0.4) > TOLERANCE  # pixels this close to the threshold may go either way
        assert np.array_equal(mask[settled], (want >= 0.4)[settled]), result
        assert mask.any(), result
        assert abs(result.stats["mean_probability"] - want[mask].mean()) < TOLERANCE


def test_segmenter_accepts_image_prompt_and_path(checkpoint, tmp_path):
    example, image = random_images(2)
    image.save(tmp_path / "photo one.png")
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    probs = segmenter.predict(tmp_path / "photo one.png", [example, "tree"])
    assert probs.shape == (2, image.height, image.width)
    assert probs.min() >= 0 and probs.max() <= 1


def test_prompt_embedded_once_and_trimming_keeps_results(checkpoint):
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    calls = []
    segmenter.model.text.register_forward_hook(lambda *_: calls.append(1))
    image = random_images(1)[0]
    first = segmenter.predict(image, PROMPTS)
    second = segmenter.predict(image, PROMPTS[::-1])
    assert len(calls) == 1
    np.testing.assert_allclose(first[::-1], second, atol=1e-6)  # same maps, rows reordered
    segmenter.drop_unused_layers()
    assert len(segmenter.model.vision.encoder.layers) == max(segmenter.model.config.extract_layers) + 1
    np.testing.assert_array_equal(segmenter.predict(image, PROMPTS), first)
    with pytest.raises(ClipSegError, match="drop_unused_layers"):
        segmenter.predict(image, ["a new prompt"])


def copy_checkpoint(source, target):
    shutil.copytree(source, target)
    return target


def test_pickled_weights_used_only_without_safetensors(checkpoint, tmp_path):
    directory = copy_checkpoint(checkpoint, tmp_path / "bin")
    tensors = load_file(directory / "model.safetensors")
    torch.save(tensors, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    expected = load_model(checkpoint).decoder.film_mul.weight
    assert torch.equal(load_model(directory).decoder.film_mul.weight, expected)
    torch.save({"garbage": torch.zeros(1)}, directory / "pytorch_model.bin")
    save_file(tensors, directory / "model.safetensors")  # safetensors wins over the .bin
    assert torch.equal(load_model(directory).decoder.film_mul.weight, expected)


def edit_config(directory, **changes):
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), r"config\.json: missing"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors or pytorch_model.bin"),
        (lambda d: (d / "config.json").write_text("{not json"), r"config\.json: not valid JSON"),
        (lambda d: edit_config(d, use_complex_transposed_convolution="yes"), "must be true or false"),
        (lambda d: edit_config(d, model_type="bert"), "model_type is 'bert'"),
        (lambda d: edit_config(d, extract_layers=[1, 2, 40]), r"extract_layers \[1, 2, 40\]"),
        (lambda d: edit_config(d, reduce_dim=16), "has shape"),
    ],
)
def test_loading_errors_name_the_file(checkpoint, tmp_path, damage, message):
    directory = copy_checkpoint(checkpoint, tmp_path / "bad")
    damage(directory)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(directory)
    assert str(directory) in str(info.value) and "\n" not in str(info.value)


def test_truncated_safetensors(checkpoint, tmp_path):
    directory = copy_checkpoint(checkpoint, tmp_path / "cut")
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        load_model(directory)


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_state_dict_must_match_exactly(checkpoint, tmp_path, change):
    directory = copy_checkpoint(checkpoint, tmp_path / change)
    tensors = load_file(directory / "model.safetensors")
    if change == "drop":
        del tensors["decoder.film_add.bias"]
        message = "missing tensor 'decoder.film_add.bias'"
    else:
        tensors["decoder.surprise"] = torch.zeros(2)
        message = "unexpected tensor 'decoder.surprise'"
    save_file(tensors, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_model(directory)


def test_unknown_name_lists_choices():
    with pytest.raises(ClipSegError, match="CIDAS/clipseg-rd64-refined"):
        load_model("no-such-model", offline=True)


def test_fast_precision_agrees_with_fp32(checkpoint):
    """bf16 takes the rewritten image tower (folded activations, bmm attention); the masks stay the same."""
    image = random_images(1)[0]
    exact = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32").predict(image, PROMPTS)
    fast = Segmenter.from_pretrained(checkpoint, device="cpu", precision="bf16").predict(image, PROMPTS)
    assert np.abs(fast - exact).mean() < 0.01
    assert ((fast >= 0.4) == (exact >= 0.4)).mean() > 0.98


def test_fast_path_rewrites_compute_the_same_function(checkpoint):
    """The rewrites alone, in fp32, change nothing but rounding."""
    from clipseg_cli.modeling.fastpath import speed_up

    model = load_model(checkpoint)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.encode_image(pixels)
        speed_up(model, torch.device("cpu"))
        after = model.encode_image(pixels)
    for x, y in zip(before, after, strict=True):
        assert relative_error(y, x) < 1e-5
