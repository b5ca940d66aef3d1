"""--refine: masks that follow the object's edges (guided filter, matting, SAM).

Geometry on real pixels (a sharp object edge and a map made as CLIPSeg makes one), the CLI against
the library API, byte-identical outputs without refinement, reruns, and SAM against transformers'
SamModel + SamProcessor called by hand with the same prompts.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from PIL import Image

from clipseg_cli.fingerprint import read_record
from clipseg_cli.postprocess import PostProcess, mask_and_map
from clipseg_cli.predictor import Segmenter
from clipseg_cli.refine import refine_map
from clipseg_cli.refine.matting import matte
from clipseg_cli.refine.sam import SamRefiner, region_prompts
from clipseg_cli.run.job import Job
from clipseg_cli.run.outputs import OutputPlan
from factory import build_sam_checkpoint
from helpers import clipseg, noise, save, subprocess_env
from hub_server import FakeHub

pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network, no user cache

SIZE = (352, 264)  # (width, height): 22 patches of 16 x 12 pixels


# ---- a sharp edge and CLIPSeg's blob of it ------------------------------------------------------------------------


def sharp_object(size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A disc and a rectangle on a noisy background of another colour, with sharp edges and corners.

    Returns:
        (HxWx3 uint8 image, HxW bool true mask).
    """
    width, height = size
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:height, :width]
    disc = (x - 0.4 * width) ** 2 + ((y - 0.5 * height) * 1.3) ** 2 < (0.28 * height) ** 2
    mask = disc | ((abs(x - 0.62 * width) < 0.17 * width) & (abs(y - 0.45 * height) < 0.2 * height))
    image = np.where(mask[..., None], [200, 60, 40], [40, 110, 180]) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def patch_map(mask: np.ndarray) -> np.ndarray:
    """The mask as CLIPSeg sees it: 22 x 22 patch averages, upsampled bilinearly. Returns HxW float32."""
    height, width = mask.shape
    patches = cv2.resize(mask.astype(np.float32), (22, 22), interpolation=cv2.INTER_AREA)
    return cv2.resize(patches, (width, height), interpolation=cv2.INTER_LINEAR)


def edge_distance(found: np.ndarray, truth: np.ndarray) -> float:
    """Returns: the largest distance in pixels from an edge pixel of either mask to the other's edge."""
    def edge(mask: np.ndarray) -> np.ndarray:
        m = mask.astype(np.uint8)
        return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderValue=0)) > 0

    a, b = edge(found), edge(truth)
    to_b = cv2.distanceTransform((~b).view(np.uint8), cv2.DIST_L2, 5)
    to_a = cv2.distanceTransform((~a).view(np.uint8), cv2.DIST_L2, 5)
    return float(max(to_b[a].max(), to_a[b].max()))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["guided", "matting"])
def test_the_refined_edge_lands_within_2_pixels_of_the_true_edge(method: str) -> None:
    image, truth = sharp_object()
    coarse = patch_map(truth)
    assert edge_distance(coarse >= 0.4, truth) > 4  # the blob misses the edge
    refined = refine_map(image, coarse, method)
    assert refined.dtype == np.float32 and refined.shape == truth.shape
    assert refined.min() >= 0 and refined.max() <= 1
    assert edge_distance(refined >= 0.4, truth) <= 2


def test_the_refined_edge_is_as_good_on_a_5_times_larger_photo_in_proportion() -> None:
    """Radius and band scale with the image: a 5x larger photo is refined to the same relative error."""
    image, truth = sharp_object((5 * SIZE[0], 5 * SIZE[1]))
    coarse = patch_map(truth)
    assert edge_distance(coarse >= 0.4, truth) > 4 * 5
    assert edge_distance(refine_map(image, coarse, "guided") >= 0.4, truth) <= 2 * 5


def test_matting_estimates_foreground_colours_without_the_old_background() -> None:
    image, truth = sharp_object()
    result = matte(image, patch_map(truth))
    rim = (result.alpha > 0.05) & ~truth  # background pixels the alpha reaches
    red_blue = result.foreground[..., 0].astype(int) - result.foreground[..., 2]
    assert rim.any() and np.median(red_blue[rim]) > 0  # the object's red, not the background's blue
    inside = cv2.erode(truth.view(np.uint8), np.ones((15, 15), np.uint8)).view(bool)
    assert (result.foreground[inside] == image[inside]).all() and (result.alpha[inside] == 1).all()


def test_matting_keeps_a_leg_narrower_than_a_patch_that_the_map_barely_sees() -> None:
    """A 6 px leg under a body: CLIPSeg's map gives it 0.16-0.36, below the cut, but it is no background."""
    width, height = SIZE
    y, x = np.mgrid[:height, :width]
    body = (abs(x - 0.5 * width) < 0.25 * width) & (abs(y - 0.35 * height) < 0.15 * height)
    leg = (abs(x - 0.3 * width) < 3) & (y >= 0.35 * height) & (y < 0.85 * height)
    truth = body | leg
    rng = np.random.default_rng(3)
    image = np.where(truth[..., None], [200, 60, 40], [40, 110, 180]) + rng.normal(0, 12, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    coarse = patch_map(truth)
    lower_leg = leg & (y > 0.55 * height)
    assert coarse[lower_leg].max() < 0.5  # below any cut of the map
    found = refine_map(image, coarse, "matting") >= 0.5
    assert found[lower_leg].mean() > 0.9 and not (found & ~truth).any()


# ---- the command line, against the API ----------------------------------------------------------------------------


@pytest.fixture
def edge_photo(tmp_path: Path) -> Path:
    return save(Image.fromarray(sharp_object()[0]), tmp_path / "photos" / "edge.png")


def api_mask(checkpoint: Path, photo: Path, method: str, post: PostProcess = PostProcess()) -> np.ndarray:
    prob = Segmenter.from_pretrained(str(checkpoint), device="cpu", precision="fp32").predict(photo, "car")[0]
    return mask_and_map(refine_map(Image.open(photo), prob, method), post)[0]


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image) == 255


@pytest.mark.slow
@pytest.mark.parametrize("method", ["guided", "matting"])
def test_cli_refine_writes_the_api_mask_and_says_so_in_json(edge_photo: Path, checkpoint: Path, tmp_path: Path,
                                                             method: str) -> None:
    done = clipseg("segment", edge_photo, "car", "--weights", checkpoint, "--precision", "fp32", "--refine", method,
                   "-o", tmp_path / "out", "--json", "--dilate", "1")
    assert done.code == 0, done.stderr
    [record] = done.records()
    assert record["refine"] == method and record["status"] == "ok"
    expected = api_mask(checkpoint, edge_photo, method, PostProcess(dilate=1))
    assert (read_mask(tmp_path / "out" / "edge.car.mask.png") == expected).all()
    assert (expected != api_mask(checkpoint, edge_photo, "none", PostProcess(dilate=1))).any()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_job_with_refine_writes_the_files_of_the_cli(edge_photo: Path, checkpoint: Path, tmp_path: Path) -> None:
    done = clipseg("segment", edge_photo, "car", "--weights", checkpoint, "--precision", "fp32", "--refine",
                   "matting", "--cutout", "-o", tmp_path / "cli")
    assert done.code == 0, done.stderr
    segmenter = Segmenter.from_pretrained(str(checkpoint), device="cpu", precision="fp32")
    job = Job(["car"], refine="matting", plan=OutputPlan(cutout=True))
    assert [r.refine for r in job.segment(segmenter, [edge_photo], output_dir=tmp_path / "api")] == ["matting"]
    files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert len(files) == 3 and files == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in files:  # digests: pytest's diff of two PNGs' bytes would take minutes
        assert digest(tmp_path / "cli" / name) == digest(tmp_path / "api" / name), name


@pytest.mark.slow
def test_batch_refines_the_union_once_after_the_prompt_algebra(edge_photo: Path, checkpoint: Path,
                                                               tmp_path: Path) -> None:
    done = clipseg("batch", edge_photo.parent, "-p", "car", "-p", "tree", "--union", "--refine", "guided", "--weights",
                   checkpoint, "--precision", "fp32", "-o", tmp_path / "out", "--json", "--no-overlay")
    assert done.code == 0, done.stderr
    [record] = done.records()
    assert record["refine"] == "guided"
    probs = Segmenter.from_pretrained(str(checkpoint), device="cpu", precision="fp32").predict(edge_photo,
                                                                                               ["car", "tree"])
    expected = mask_and_map(refine_map(Image.open(edge_photo), probs.max(axis=0), "guided"), PostProcess())[0]
    assert (read_mask(Path(record["mask"])) == expected).all()


@pytest.mark.slow
def test_matting_cutout_carries_the_estimated_foreground_colours(edge_photo: Path, checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    done = clipseg("segment", edge_photo, "car", "--weights", checkpoint, "--precision", "fp32", "--refine",
                   "matting", "--soft", "--cutout", "-o", tmp_path / "out")
    assert done.code == 0, done.stderr
    prob = Segmenter.from_pretrained(str(checkpoint), device="cpu", precision="fp32").predict(edge_photo, "car")[0]
    image = np.asarray(Image.open(edge_photo).convert("RGB"))
    expected = matte(image, prob)
    cut = np.asarray(Image.open(tmp_path / "out" / "edge.car.cutout.png"))
    seen = cut[..., 3] > 0  # colour is 0 under alpha 0 (no background leaks)
    assert (cut[seen][:, :3] == expected.foreground[seen]).all() and (cut[~seen][:, :3] == 0).all()
    assert (cut[..., :3] != image).any()  # the colours in the band are the estimated ones
    assert np.abs(cut[..., 3].astype(int) - np.round(expected.alpha * 255)).max() <= 1


def test_refine_none_writes_byte_identical_files_and_json(photo_args: list, tmp_path: Path) -> None:
    plain = clipseg(*photo_args, "-o", tmp_path / "plain")
    none = clipseg(*photo_args, "-o", tmp_path / "none", "--refine", "none")
    assert plain.code == none.code == 0, none.stderr
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert len(files) == 3 and files == sorted(p.name for p in (tmp_path / "none").iterdir())
    for name in files:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "none" / name).read_bytes()
        assert "refine" not in read_record(tmp_path / "none" / name)["settings"]
    assert plain.stdout.replace("plain", "none") == none.stdout and '"refine"' not in none.stdout


@pytest.fixture
def photo_args(tmp_path: Path, checkpoint: Path) -> list:
    photo = save(noise((72, 48)), tmp_path / "photos" / "photo.png")
    return ["segment", photo, "car", "--weights", checkpoint, "--cutout", "--soft", "--json"]


def test_a_rerun_with_another_refinement_redoes_the_outputs(photo_args: list, tmp_path: Path) -> None:
    out = ["-o", tmp_path / "out"]
    assert clipseg(*photo_args, *out, "--refine", "guided").code == 0
    again = clipseg(*photo_args, *out, "--refine", "guided").records()
    assert again[0]["status"] == "skipped"
    other = clipseg(*photo_args, *out, "--refine", "matting").records()
    assert other[0]["status"] == "ok" and other[0]["reason"] == "settings changed (refine)"
    assert read_record(tmp_path / "out" / "photo.car.mask.png")["settings"]["refine"] == "matting"
    back = clipseg(*photo_args, *out).records()
    assert back[0]["status"] == "ok" and back[0]["reason"] == "settings changed (refine)"


def test_an_unknown_method_is_a_set_up_error(photo_args: list, tmp_path: Path) -> None:
    done = clipseg(*photo_args, "-o", tmp_path / "out", "--refine", "magic")
    assert done.code == 2 and not (tmp_path / "out").exists()
    assert done.errors() == ["error: unknown refinement 'magic'; use one of none, guided, matting, sam"]


@pytest.mark.slow
def test_missing_pymatting_is_one_line_naming_the_extra(photo_args: list, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['pymatting'] = None\n"
            "from clipseg_cli.cli import main; sys.exit(main(sys.argv[1:]))")
    args = [str(a) for a in photo_args] + ["-o", str(tmp_path / "out"), "--refine", "matting"]
    done = subprocess.run([sys.executable, "-c", code, *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: --refine matting needs pymatting, which is not installed; "
                                        "install it with: pip install 'clipseg-cli[matting]'"]
    assert not (tmp_path / "out").exists()


# ---- SAM ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sam_checkpoint(tmp_path_factory.mktemp("sam"))


def two_regions() -> np.ndarray:
    prob = np.zeros((48, 72), np.float32)
    prob[5:20, 5:30] = 0.9
    prob[25:45, 40:70] = 0.8
    return prob


def test_region_prompts_are_each_regions_box_and_inner_points() -> None:
    prompts = region_prompts(two_regions(), 0.4)
    assert prompts.boxes == [[40.0, 25.0, 70.0, 45.0], [5.0, 5.0, 30.0, 20.0]]  # largest first, x1 y1 exclusive
    assert prompts.labels == [[1, 1, 1]] * 2
    for box, points in zip(prompts.boxes, prompts.points, strict=True):
        assert len(points) == 3 and len({tuple(p) for p in points}) == 3
        assert all(box[0] <= x < box[2] and box[1] <= y < box[3] for x, y in points)


def by_hand(directory: Path, image: Image.Image, boxes: list, points: list, labels: list) -> np.ndarray:
    """SAM as its transformers documentation calls it: processor, model, post_process_masks."""
    from transformers import SamModel, SamProcessor

    model, processor = SamModel.from_pretrained(directory).eval(), SamProcessor.from_pretrained(directory)
    inputs = processor(images=image, input_boxes=[boxes], input_points=[points], input_labels=[labels],
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=False)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"],
                                         binarize=False)[0]
    return torch.sigmoid(masks).amax(dim=(0, 1)).numpy()


@pytest.mark.slow
def test_sam_refinement_equals_sam_called_by_hand_with_the_same_prompts(sam_checkpoint: Path) -> None:
    image = noise((72, 48), seed=5)
    ours = SamRefiner.from_pretrained(str(sam_checkpoint), progress=False).refine(image, two_regions(), 0.4)
    boxes = [[40.0, 25.0, 70.0, 45.0], [5.0, 5.0, 30.0, 20.0]]
    points = [[[49.0, 34.0], [60.0, 34.0], [42.0, 42.0]], [[12.0, 12.0], [21.0, 12.0], [6.0, 6.0]]]
    reference = by_hand(sam_checkpoint, image, boxes, points, [[1, 1, 1]] * 2)
    assert ours.shape == (48, 72) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert ((ours >= 0.5) == (reference >= 0.5)).all()
    other = by_hand(sam_checkpoint, image, boxes[1:], points[1:], [[1, 1, 1]])
    assert ((other >= 0.5) != (reference >= 0.5)).any()  # the prompts matter: the comparison means something


def test_cli_refine_sam_uses_the_given_checkpoint(photo_args: list, tmp_path: Path, sam_checkpoint: Path) -> None:
    done = clipseg(*photo_args, "-o", tmp_path / "out", "--refine", "sam", "--sam-weights", sam_checkpoint)
    assert done.code == 0, done.stderr
    assert done.records()[0]["refine"].startswith(f"sam:{sam_checkpoint.name}:")


@pytest.mark.slow
def test_download_weights_fetches_sam_and_refine_finds_it_offline(
    hub_server: FakeHub, sam_checkpoint: Path, photo_args: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_server.add_revision("nielsr/slimsam-50-uniform", "main", {p.name: p.read_bytes() for p in
                                                                   sam_checkpoint.iterdir()})
    cache = tmp_path / "cache"
    env = subprocess_env(HF_ENDPOINT=hub_server.url, HF_HUB_CACHE=str(cache))
    env.pop("HF_HUB_OFFLINE")
    fetched = subprocess.run([sys.executable, "-m", "clipseg_cli", "download-weights", "slimsam-50", "-q"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    assert (Path(fetched.stdout.strip()) / "model.safetensors").read_bytes() == (
        sam_checkpoint / "model.safetensors").read_bytes()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    done = clipseg(*photo_args, "-o", tmp_path / "out", "--refine", "sam", "--offline")
    assert done.code == 0, done.stderr
    assert done.records()[0]["refine"].startswith("sam:slimsam-50-uniform:")


def test_download_weights_list_names_the_sam_checkpoints() -> None:
    lines = clipseg("download-weights", "--list").stdout.splitlines()
    assert any(line.startswith("nielsr/slimsam-50-uniform ") and "--refine sam" in line for line in lines)


def test_refine_sam_offline_without_weights_says_how_to_fetch(photo_args: list, tmp_path: Path) -> None:
    done = clipseg(*photo_args, "-o", tmp_path / "out", "--refine", "sam", "--offline")
    assert done.code == 2
    assert "clipseg download-weights nielsr/slimsam-50-uniform" in done.errors()[0]


def test_json_record_is_valid_per_line(photo_args: list, tmp_path: Path) -> None:
    done = clipseg(*photo_args, "-o", tmp_path / "out", "--refine", "guided")
    assert [json.loads(line)["refine"] for line in done.stdout.splitlines()] == ["guided"]
