"""The visual prompt (--prompt-mask) against a transcription of the original code (timojl/clipseg).

``original_prompt`` below does what ``datasets/phrasecut.py`` ``load_sample`` and
``evaluation_utils.py`` ``img_preprocess(blur=3, center_context=0.1, bg_fac=0.1)`` do, in their
order and with their operations; cv2.GaussianBlur is written out with OpenCV's kernel formula and
its default border (reflect-101), since OpenCV is not a dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image

from clipseg_cli import Segmenter
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.preprocess import Preprocessing
from clipseg_cli.imaging.visual_prompt import prepare_visual_prompt, visual_prompt

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cv2_gaussian_blur(img: np.ndarray, ksize: int = 15, sigma: float = 3.0) -> np.ndarray:
    """cv2.GaussianBlur(img, (ksize, ksize), sigma) on an HxWxC float32 image, written out."""
    x = np.arange(ksize) - (ksize - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).astype(np.float32)
    r = ksize // 2
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")  # numpy's reflect is BORDER_REFLECT_101
    h, w = img.shape[:2]
    rows = sum(kernel[k] * padded[:, k : k + w] for k in range(ksize))
    return sum(kernel[k] * rows[k : k + h] for k in range(ksize)).astype(np.float32)


def crop_mask(img, mask, context=0.0):
    """evaluation_utils.crop_mask (square=False), as written there."""
    assert img.shape[1:] == mask.shape
    bbox = [mask.max(0).values.argmax(), mask.size(0) - mask.max(0).values.flip(0).argmax()]
    bbox += [mask.max(1).values.argmax(), mask.size(1) - mask.max(1).values.flip(0).argmax()]
    bbox = [int(x) for x in bbox]
    width, height = (bbox[3] - bbox[2]), (bbox[1] - bbox[0])
    bbox[0] = int(max(0, bbox[0] - context * height))
    bbox[1] = int(min(mask.size(0), bbox[1] + context * height))
    bbox[2] = int(max(0, bbox[2] - context * width))
    bbox[3] = int(min(mask.size(1), bbox[3] + context * width))
    return img[:, bbox[2] : bbox[3], bbox[0] : bbox[1]], bbox


def pad_to_square(img):
    """evaluation_utils.pad_to_square (channel_dim=0, fill 0); torchvision's pad is (left, top, right, bottom)."""
    h, w = img.shape[1:]
    pady1 = pady2 = padx1 = padx2 = 0
    if h > w:
        padx1 = (h - w) // 2
        padx2 = h - w - padx1
    elif w > h:
        pady1 = (w - h) // 2
        pady2 = w - h - pady1
    return nnf.pad(img, (padx1, padx2, pady1, pady2), mode="constant", value=0)


def original_prompt(img: np.ndarray, seg: np.ndarray, image_size: int, mean, std) -> torch.Tensor:
    """load_sample, then blend_image_segmentation(mode='crop_blur_highlight352') at image_size."""
    # load_sample
    seg = torch.from_numpy(seg.astype("uint8")).view(1, 1, *seg.shape)
    img = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float()
    seg = nnf.interpolate(seg, (image_size, image_size), mode="nearest")[0, 0]
    img = nnf.interpolate(img, (image_size, image_size), mode="bilinear", align_corners=True)[0]
    img = img / 255.0
    img = (img - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]  # transforms.Normalize
    # img_preprocess(blur=3, center_context=0.1, bg_fac=0.1, image_size=image_size)
    img_bl = torch.from_numpy(cv2_gaussian_blur(img.permute(1, 2, 0).numpy(), 15, 3)).permute(2, 0, 1)
    img_inp = img * seg + 0.1 * img_bl * (1 - seg)
    # object_crop
    img_crop, _ = crop_mask(img_inp, seg, context=0.1)
    img_crop = pad_to_square(img_crop)
    return nnf.interpolate(img_crop.unsqueeze(0), (image_size, image_size)).squeeze(0)


def example(width: int, height: int, box: tuple[int, int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random HxWx3 uint8 pixels and an HxW bool mask with an irregular object inside box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    mask[y0, x0] = mask[y1 - 1, x1 - 1] = True  # the box is the object's bounding box
    return pixels, mask


CASES = {  # (width, height, object box, model input size)
    "wide object in a wide image": (53, 37, (9, 11, 40, 24), 64),
    "tall object at the corner": (41, 58, (0, 30, 11, 58), 64),
    "object filling the image": (30, 30, (0, 0, 30, 30), 32),
    "thin object, larger input": (120, 90, (50, 10, 57, 80), 100),
    "smaller than the input": (20, 17, (3, 4, 16, 9), 48),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_the_original_code(case: str) -> None:
    width, height, box, size = CASES[case]
    pixels, mask = example(width, height, box)
    prompt = visual_prompt(Image.fromarray(pixels), mask)
    ours = prepare_visual_prompt(prompt, Preprocessing(size=(size, size)))
    expected = original_prompt(pixels, mask, size, *IMAGENET)
    assert ours.shape == expected.shape == (3, size, size) and ours.dtype == torch.float32
    assert (ours - expected).abs().max() < 1e-5


def test_uses_the_checkpoints_mean_and_std() -> None:
    pixels, mask = example(40, 30, (5, 5, 25, 20), seed=1)
    other = ((0.5, 0.4, 0.3), (0.2, 0.3, 0.25))
    ours = prepare_visual_prompt(visual_prompt(Image.fromarray(pixels), mask),
                                 Preprocessing(size=(48, 48), mean=other[0], std=other[1]))
    assert (ours - original_prompt(pixels, mask, 48, *other)).abs().max() < 1e-5


def test_blur_is_opencvs_15x15_sigma_3_kernel() -> None:
    """A lone bright pixel in the background spreads as cv2's kernel: 0.1 x k(dy) k(dx) / std, nothing at 8 px."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[20, 40] = 255
    mask = np.zeros((64, 64), bool)
    mask[0, 0] = mask[63, 63] = True  # the box is the whole image: no crop, no resize
    ours = prepare_visual_prompt(visual_prompt(Image.fromarray(pixels), mask), Preprocessing(size=(64, 64)))
    mean, std = (torch.tensor(v)[:, None, None] for v in IMAGENET)
    spread = (ours - 0.1 * (0 - mean) / std)[:, 20 - 8 : 20 + 9, 40 - 8 : 40 + 9]
    x = np.arange(15) - 7
    kernel = np.exp(-(x**2) / 18) / np.exp(-(x**2) / 18).sum()
    expected = np.zeros((17, 17))
    expected[1:16, 1:16] = np.outer(kernel, kernel)
    expected = torch.from_numpy(expected).float()[None] * 0.1 / std
    assert (spread - expected).abs().max() < 1e-6


@pytest.mark.slow
def test_segmenter_embeds_the_prepared_pixels(checkpoint) -> None:
    """The Segmenter prepares a VisualPrompt at its checkpoint's input size and feeds it to the image tower."""
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32")
    pixels, mask = example(50, 40, (10, 8, 35, 30), seed=2)
    size = segmenter.preprocessing.size[0]
    expected = segmenter.model.embed_image(original_prompt(pixels, mask, size, *IMAGENET)[None])
    embedded = segmenter.embed([visual_prompt(Image.fromarray(pixels), mask)])
    assert (embedded - expected).abs().max() < 1e-4
    plain = segmenter.embed([Image.fromarray(pixels)])
    assert (embedded - plain).abs().max() > 0.1  # the mask changes the prompt


def test_accepts_pil_and_integer_masks() -> None:
    pixels, mask = example(40, 30, (5, 5, 25, 20))
    image = Image.fromarray(pixels)
    reference = visual_prompt(image, mask)
    for other in (Image.fromarray(mask.astype(np.uint8) * 255), mask.astype(np.int64), mask.astype(np.float32)):
        assert np.array_equal(visual_prompt(image, other).mask, reference.mask)
        assert visual_prompt(image, other).key() == reference.key()


def test_rejects_empty_and_wrong_size_masks() -> None:
    image = Image.new("RGB", (200, 120))
    with pytest.raises(ClipSegError, match="prompt mask is empty"):
        visual_prompt(image, np.zeros((120, 200), bool))
    with pytest.raises(ClipSegError, match=r"100x50.*200x120"):
        visual_prompt(image, np.ones((50, 100), bool))


def test_rejects_an_object_that_vanishes_at_the_input_size() -> None:
    mask = np.zeros((400, 400), bool)
    mask[201, 201] = True
    prompt = visual_prompt(Image.new("RGB", (400, 400)), mask)
    with pytest.raises(ClipSegError, match="vanishes"):
        prepare_visual_prompt(prompt, Preprocessing(size=(64, 64)))
