"""The ONNX Runtime path: equal to the reference, its graph cache, its tokenizer, and no torch on it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPTokenizer

from clipseg_cli.backends.graph_cache import entry_dir, graph_path, verify_graph
from clipseg_cli.backends.optimize import weights_path
from clipseg_cli.backends.ort import prepare_graphs
from clipseg_cli.backends.tokenizer import ClipTokenizer
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.upsample import sigmoid_, upsample_bilinear
from clipseg_cli.predictor import Segmenter
from clipseg_cli.runtime import choose_runtime
from factory import CONFIGS, Reference, build_checkpoint, probe_image, save_modern_layout
from helpers import clipseg

SRC = Path(__file__).resolve().parents[2] / "src"
TEXTS = ["red car", "tree", "a dog on the left"]
EXAMPLE = probe_image(10, (40, 40))
RELATIVE = 1e-5  # max |ours - reference| / max |reference| on the logits
# ONNX Runtime fp32 sums in another order than torch, so it is as far from transformers as torch's
# own rounding is, give or take: on the tiny checkpoints (scaled so that prompts matter, which also
# amplifies rounding) torch fp32 is 8e-6 from transformers on config "layers" (onnxruntime 1.20.1:
# 1.6e-5) and 3.2e-5 on config "fine" (onnxruntime: 4e-5). The test holds onnxruntime to 2e-5, or to
# twice torch's own distance where that is larger.
RELATIVE_ORT = 2e-5
INT8_AGREEMENT = 0.95  # fraction of mask pixels (p >= 0.4) equal to fp32's on the tiny random checkpoints


def on_onnxruntime(directory: Path) -> Segmenter:
    return Segmenter.from_pretrained(directory, device="cpu", backend="onnxruntime", progress=False)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def reference_logits(reference: Reference, image, prompts: list) -> np.ndarray:
    """transformers' logits for one image and each prompt (texts, then example images): Pxhxw."""
    texts = [p for p in prompts if isinstance(p, str)]
    examples = [p for p in prompts if not isinstance(p, str)]
    rows = []
    with torch.no_grad():
        if texts:
            inputs = reference.processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
            rows.append(reference.model(**inputs).logits.reshape(len(texts), *inputs["pixel_values"].shape[-2:]))
        if examples:
            inputs = reference.processor(images=[image] * len(examples), visual_prompt=examples, return_tensors="pt")
            rows.append(reference.model(**inputs).logits.reshape(len(examples), *inputs["pixel_values"].shape[-2:]))
    return torch.cat(rows).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_onnxruntime_logits_equal_the_reference(name, tmp_path_factory, checkpoint):
    directory = checkpoint if name == "complex" else build_checkpoint(tmp_path_factory.mktemp(name), name)
    ours = on_onnxruntime(directory)
    assert ours.backend == "onnxruntime" and ours.is_fp32
    reference = Reference(directory)
    prompts = [*TEXTS, EXAMPLE] if name == "complex" else TEXTS  # the visual graph once: its export is slow
    images = [probe_image(0), probe_image(1, (33, 91))]
    expected = np.stack([reference_logits(reference, image, prompts) for image in images])
    exact = Segmenter.from_pretrained(directory, device="cpu", precision="fp32").logits(images, prompts).numpy()
    bound = max(RELATIVE_ORT, 2 * relative_error(exact, expected))  # over the batch, as test_model
    assert relative_error(ours.logits(images, prompts), expected) < bound


@pytest.mark.slow
def test_int8_masks_agree_with_fp32(checkpoint):
    image = probe_image(0, (120, 90))
    exact = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32").predict(image, TEXTS)
    int8 = Segmenter.from_pretrained(checkpoint, device="cpu", precision="int8", progress=False)
    assert int8.identity["precision"] == "int8-onnxruntime" and not int8.is_fp32
    fast = int8.predict(image, TEXTS)
    agreement = float(((fast >= 0.4) == (exact >= 0.4)).mean())
    assert INT8_AGREEMENT <= agreement < 1.0  # quantized, yet the same masks nearly everywhere


@pytest.mark.slow
@pytest.mark.parametrize(("side", "size"), [(64, (70, 50)), (64, (33, 91)), (64, (20, 10)), (64, (64, 64)),
                                            (352, (1280, 720)), (352, (4000, 3000))])
def test_numpy_upsampling_equals_torch(side, size):
    logits = np.random.default_rng(0).normal(0, 3, (2, side, side)).astype(np.float32)
    width, height = size
    expected = F.interpolate(torch.from_numpy(logits)[:, None], size=(height, width), mode="bilinear",
                             align_corners=False)[:, 0]
    got = upsample_bilinear(logits, size)
    assert relative_error(got, expected.numpy()) < 1e-6  # float rounding: the same positions and weights
    assert np.abs(sigmoid_(got) - torch.sigmoid(expected).numpy()).max() < 1e-6


def test_tokenizer_gives_transformers_ids(checkpoint, tmp_path):
    texts = ["red car", "Zürich 犬 <|endoftext|>", "  A  DOG\ton the\nleft ", "it's <|startoftext|>x", "",
             "🐕 cars", "tree " * 40, "Façade, 3.5 m; ÜBER"]
    for directory in (checkpoint, save_modern_layout(checkpoint, tmp_path / "modern")):
        expected = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)(
            texts, padding=True, truncation=True, max_length=32, return_tensors="np")
        ids, mask = ClipTokenizer(directory, 32, 600)(texts)
        assert np.array_equal(ids, expected["input_ids"]) and np.array_equal(mask, expected["attention_mask"])


def test_plan_picks_the_runtime(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    import clipseg_cli.runtime as runtime

    for flags in ({"avx2", "avx512f", "avx512_bf16"}, {"avx2"}):  # auto is fp32 through ONNX Runtime whatever the CPU
        monkeypatch.setattr(runtime, "_cpu_flags", lambda flags=frozenset(flags): flags)
        assert choose_runtime("cpu", "auto") == runtime.Runtime("onnxruntime", "cpu", "fp32")
    assert choose_runtime("cpu", "fp32") == runtime.Runtime("torch", "cpu", "fp32")  # the reference stays torch
    assert choose_runtime("cpu", "int8").backend == "onnxruntime"
    with pytest.raises(ClipSegError, match="int8 runs on ONNX Runtime only"):
        choose_runtime("cpu", "int8", "torch")
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    assert runtime.cpu_has_amx_bf16()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # an emulated AVX2 CPU has no bf16 units for torch
    assert not runtime.cpu_has_amx_bf16() and runtime.fast_cpu_precision() == "int8"


@pytest.mark.slow
def test_cache_is_keyed_by_the_checkpoint_and_rebuilt_when_stale(tmp_path, own_cache):
    directory = build_checkpoint(tmp_path / "ckpt", "plain")
    first = on_onnxruntime(directory)
    graph = graph_path(first.runner.entry, "segment", "fp32")
    assert graph.is_file() and first.runner.entry.parent == own_cache / "onnx"
    assert not [p for p in first.runner.entry.iterdir() if p.name.startswith(".")]  # no temporary file left
    expected = first.predict(probe_image(0), TEXTS)
    built = graph.stat().st_mtime_ns
    assert on_onnxruntime(directory).runner.entry == first.runner.entry and graph.stat().st_mtime_ns == built

    graph.write_bytes(b"not a graph")  # damaged: exported again
    assert np.array_equal(on_onnxruntime(directory).predict(probe_image(0), TEXTS), expected)

    first.runner.lock.release()  # done with the old entry (a live one is kept: tests/test_cache.py)
    build_checkpoint(directory, "plain", seed=5)  # new weights in the same folder: a new entry, the old one gone
    fresh = on_onnxruntime(directory)
    old, new = first.runner.entry, fresh.runner.entry
    assert new != old and not old.exists() and new == entry_dir(directory)
    assert np.abs(fresh.predict(probe_image(0), TEXTS) - expected).max() > 0.1


KILLED_DURING_EXPORT = """
import os, signal, sys
import onnxruntime
real = onnxruntime.InferenceSession
def killed_while_optimising(path, options=None, *args, **kwargs):
    if options is not None and options.optimized_model_filepath:  # store_optimized's session
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, options, *args, **kwargs)
onnxruntime.InferenceSession = killed_while_optimising
from clipseg_cli.predictor import Segmenter
Segmenter.from_pretrained(sys.argv[1], device="cpu", backend="onnxruntime", progress=False)
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_an_export_killed_midway_leaves_nothing_behind_once_the_next_run_exports(tmp_path, own_cache):
    directory = build_checkpoint(tmp_path / "ckpt", "plain")
    done = subprocess.run([sys.executable, "-c", KILLED_DURING_EXPORT, str(directory)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=300)
    assert done.returncode == -9, done.stderr
    entry = entry_dir(directory)
    left = [p for p in entry.iterdir() if p.name.startswith(".")]
    assert left and all(p.is_dir() for p in left)  # the killed export's work folder (about the weights' size)
    assert not graph_path(entry, "segment", "fp32").exists()  # never a half-written graph in place

    segmenter = on_onnxruntime(directory)
    assert not [p for p in entry.iterdir() if p.name.startswith(".")]
    assert segmenter.predict(probe_image(0), TEXTS).shape[0] == len(TEXTS)


@pytest.mark.slow
def test_the_segment_graph_traced_on_one_image_and_prompt_is_the_one_traced_on_more(checkpoint):
    from clipseg_cli.backends.onnx_export import export_graph
    from clipseg_cli.checkpoints.loading import check_processing, load_directory

    model, size = load_directory(checkpoint), check_processing(checkpoint)[1].size
    assert export_graph(model, "segment", size) == export_graph(model, "segment", size, example=(2, 3))


@pytest.mark.slow
def test_a_failed_text_export_leaves_the_segment_graph_stored_and_a_rerun_exports_only_the_text(
        tmp_path, own_cache, monkeypatch):
    import clipseg_cli.backends.onnx_export as export
    import clipseg_cli.backends.optimize as optimize

    directory = build_checkpoint(tmp_path / "ckpt", "plain")
    failed, exported = threading.Event(), []
    real_export, real_store = export.export_graph, optimize.store_optimized

    def export_graph(model, graph, size):
        exported.append(graph)
        if graph == "text" and not failed.is_set():
            failed.set()  # the segment graph is still being stored (held below)
            raise RuntimeError("text export failed")
        return real_export(model, graph, size)

    def store_optimized(path, data):
        if path.name.startswith("segment"):
            assert failed.wait(60)  # stored only once the text export has failed
        real_store(path, data)

    monkeypatch.setattr(export, "export_graph", export_graph)
    monkeypatch.setattr(optimize, "store_optimized", store_optimized)
    with pytest.raises(RuntimeError, match="text export failed"):
        prepare_graphs(directory, progress=False)
    entry = entry_dir(directory)
    segment, text = graph_path(entry, "segment", "fp32"), graph_path(entry, "text", "fp32")
    verify_graph(segment)  # stored whole and sealed before the error reached the caller
    assert not text.exists() and exported == ["segment", "text"]
    stamp = segment.stat().st_mtime_ns
    assert prepare_graphs(directory, progress=False)
    assert exported == ["segment", "text", "text"] and segment.stat().st_mtime_ns == stamp
    verify_graph(text)


@pytest.mark.slow
def test_graph_weights_stored_beside_it_and_rebuilt_when_damaged(tmp_path):
    directory = build_checkpoint(tmp_path / "ckpt", "plain")
    first = on_onnxruntime(directory)
    expected = first.predict(probe_image(0), TEXTS)
    weights = weights_path(graph_path(first.runner.entry, "segment", "fp32"))
    assert weights.stat().st_size > graph_path(first.runner.entry, "segment", "fp32").stat().st_size
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-copied cache
    assert np.array_equal(on_onnxruntime(directory).predict(probe_image(0), TEXTS), expected)


@pytest.mark.slow
def test_text_embeddings_are_stored_with_the_graphs(tmp_path):
    directory = build_checkpoint(tmp_path / "ckpt", "plain")
    first = on_onnxruntime(directory)
    expected = first.predict(probe_image(0), TEXTS)
    text_graph = graph_path(first.runner.entry, "text", "fp32")
    text_graph.write_bytes(b"damaged")  # only a prompt never seen before opens it (and exports it again)
    again = on_onnxruntime(directory)
    assert np.array_equal(again.predict(probe_image(0), TEXTS[::-1]), expected[::-1])  # bit for bit
    assert text_graph.read_bytes() == b"damaged"
    new = again.predict(probe_image(0), "a new prompt")
    assert text_graph.stat().st_size > 1000 and np.abs(new[0] - expected[0]).max() > 0.01


@pytest.mark.slow
def test_segment_on_onnxruntime_never_imports_torch(checkpoint, tmp_path):
    photo = tmp_path / "photo.jpg"
    probe_image(0, (160, 90)).save(photo)
    on_onnxruntime(checkpoint)  # the graphs in the cache
    probe = ("import sys\nfrom clipseg_cli.cli import main\ncode = main(sys.argv[1:])\n"
             "loaded = [m for m in ('torch', 'transformers.models.clip.modeling_clip') if m in sys.modules]\n"
             "print('loaded:', loaded, file=sys.stderr)\nsys.exit(3 if loaded and code == 0 else code)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}  # auto: fp32 through ONNX Runtime
    done = subprocess.run([sys.executable, "-c", probe, "segment", str(photo), "red car", "--weights", str(checkpoint),
                           "-v"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stderr and "on onnxruntime" in done.stderr
    exact = Segmenter.from_pretrained(checkpoint, device="cpu", precision="fp32").predict(photo, "red car")[0]
    mask = np.asarray(Image.open(tmp_path / "photo.red-car.mask.png")) > 0
    assert (mask == (exact >= 0.4)).mean() > 0.999


def test_unwritable_cache_falls_back_to_torch(checkpoint, tmp_path, monkeypatch):
    import clipseg_cli.runtime as runtime

    photo = tmp_path / "photo.png"
    probe_image(0).save(photo)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CLIPSEG_CACHE", str(blocker))
    bf16_cpu = frozenset({"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: bf16_cpu)  # auto: fp32 through ONNX Runtime all the same
    done = clipseg("segment", photo, "tree", "--weights", checkpoint, "--no-overlay", "-v")
    assert done.code == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "ONNX graph cache" in line]
    assert len(notes) == 1 and str(blocker) in notes[0] and "running fp32 with torch instead" in notes[0]
    assert "precision fp32 (auto asked) on torch" in done.stderr and (tmp_path / "photo.tree.mask.png").is_file()
    refused = clipseg("segment", photo, "tree", "--weights", checkpoint, "--precision", "int8", "-f", "-q")
    assert refused.code == 2 and refused.stderr.count("\n") == 1 and "ONNX graph cache" in refused.stderr
