"""Benchmark clipseg's engine against the pipeline a user writes by hand with transformers.

Both sides run alternately from this one script, each timed run in a fresh spawned process (so
that its peak memory is its own), on a full-size random-weights checkpoint built offline.

    python benchmarks/bench.py                 # issue-21 goals 1-5 (s, bf16, export, b, b-fast, tower), a, agreement
    python benchmarks/bench.py --quick         # smoke test: 2 small images x 2 prompts, narrow towers
    python benchmarks/bench.py --emulate-avx2  # both sides as on an AVX2-only CPU (torch's and oneDNN's switches)
    python benchmarks/bench.py --scenario b --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # torch and oneDNN stay off AVX-512
SINGLE_SIZE = (1280, 720)
SIZES = [(640, 480), (1280, 960), (1920, 1080), (4000, 3000)]
QUICK_SIZES = [(320, 240), (240, 320)]
PROMPTS = ["a red car", "a tree", "a dog", "the sky", "a person"]
THRESHOLD = 0.4
GB = 1e9
MERGES = ["r e", "c a", "ca r</w>", "t r", "e e</w>", "tr ee</w>", "d o", "do g</w>"]
PREPROCESSOR = {  # the published preprocessing of CIDAS/clipseg-rd64-refined
    "do_normalize": True, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 2,
    "image_processor_type": "ViTImageProcessor", "processor_class": "CLIPSegProcessor",
    "size": {"height": 352, "width": 352},
}


def write_processor_files(directory: Path) -> None:
    """The preprocessor config and a tiny CLIP BPE vocabulary (every byte, a few merges; 520/521 = start/end)."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in MERGES)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR), encoding="utf-8")


def build_checkpoint(directory: Path, tiny: bool = False) -> Path:
    """Save a random CLIPSeg rd64-refined unless there; `tiny` (--quick) narrows the towers, keeps the depths."""
    if (directory / "model.safetensors").is_file() and (directory / "preprocessor_config.json").is_file():
        return directory
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    print(f"building a random checkpoint in {directory} ...", flush=True)
    torch.manual_seed(0)
    text = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048,
                vocab_size=49408, max_position_embeddings=77, bos_token_id=520, eos_token_id=521, pad_token_id=521)
    vision = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  patch_size=16, image_size=224)
    if tiny:
        text.update(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2)
        vision.update(hidden_size=96, num_attention_heads=2, intermediate_size=192)
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=512, extract_layers=[3, 6, 9],
                           reduce_dim=64, use_complex_transposed_convolution=True, decoder_intermediate_size=2048,
                           decoder_num_attention_heads=4)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(partial, safe_serialization=True)
    write_processor_files(partial)
    partial.replace(directory)
    return directory


def make_images(folder: Path, count: int, sizes: list[tuple[int, int]], seed: int = 0) -> list[Path]:
    """`count` JPEGs (q90) cycling through `sizes`, one large one portrait; smooth noise compresses like a photo."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    portrait = (count // 2) // len(sizes) * len(sizes) - 1  # the last size of the middle cycle
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)][:: -1 if index == portrait else 1]
        coarse = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
        fine = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        base = Image.blend(Image.fromarray(coarse).resize((width, height), Image.BICUBIC),
                           Image.fromarray(fine).resize((width, height), Image.BILINEAR), 0.3)
        pixels = np.asarray(base, dtype=np.int16) + rng.integers(-3, 4, (height, width, 3), dtype=np.int16)
        paths.append(folder / f"img{index:03d}_{width}x{height}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def load_reference(ckpt: Path, prompts: list[str], precision: str, device: str, overlay: bool):
    """The hand-written transformers pipeline, always fp32 (`precision` is ignored)."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor = CLIPSegProcessor.from_pretrained(ckpt)
    model = CLIPSegForImageSegmentation.from_pretrained(ckpt).to(device).eval()

    def run(paths: list[Path], out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for path in paths:
            image = Image.open(path).convert("RGB")
            inputs = processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**inputs.to(device)).logits
            for i, logit in enumerate(logits.view(len(prompts), 1, 1, *logits.shape[-2:])):
                big = F.interpolate(logit, size=(image.height, image.width), mode="bilinear")
                mask = torch.sigmoid(big)[0, 0].cpu().numpy() >= THRESHOLD
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}.{i}.png")
                if overlay:
                    pixels = np.asarray(image, dtype=np.float32)
                    tinted = np.where(mask[..., None], pixels * 0.5 + np.float32([127.5, 0, 0]), pixels)
                    Image.fromarray(tinted.astype(np.uint8)).save(out / f"{path.stem}.{i}.overlay.png")
    return run


def load_ours(ckpt: Path, prompts: list[str], precision: str, device: str, overlay: bool):
    """clipseg's Segmenter and Engine, as `clipseg batch` runs them (the text tower freed once the prompts are
    embedded)."""
    from clipseg_cli import Segmenter
    from clipseg_cli.run.engine import Engine, Pipeline, WorkItem
    from clipseg_cli.run.outputs import OutputPlan
    from clipseg_cli.run.targets import Targets

    seg = Segmenter.from_pretrained(ckpt, device=device, precision=precision)

    def run(paths: list[Path], out: Path) -> None:
        targets = Targets.build(prompts, plan=OutputPlan(overlay=overlay), force=True)
        engine = Engine(seg, targets, Pipeline(stats=False), drop_unused_layers=True)
        results = list(engine.process([WorkItem(source=p, output_dir=out, stem=p.stem) for p in paths]))
        bad = [f"{r.image} [{r.prompt}]: {r.status} {r.error or ''}" for r in results if r.status != "ok"]
        if bad:
            raise RuntimeError("ours did not write every output: " + "; ".join(bad[:3]))
    return run


def mask_names(paths: list[Path], prompts: list[str], side: str) -> list[str]:
    """File names of the masks that a side writes, in the same (image, prompt) order for both sides."""
    if side == "reference":
        return [f"{p.stem}.{i}.png" for p in paths for i in range(len(prompts))]
    from clipseg_cli.run.outputs import label_for

    return [f"{p.stem}.{label_for(prompt)}.mask.png" for p in paths for prompt in prompts]


def peak_rss_bytes() -> int:
    """Peak RSS of this process (VmHWM; Linux's ru_maxrss survives fork+exec: a child would get our peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def timed_child(side: str, ckpt: Path, paths: list[Path], prompts: list[str], out: Path,
                precision: str, device: str, overlay: bool, threads: int | None) -> dict:
    """Load one side, warm it up on one image, then time it end to end (decode to written PNGs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    run = (load_ours if side == "ours" else load_reference)(ckpt, prompts, precision, device, overlay)
    run(paths[:1], out / "warmup")
    start = time.perf_counter()
    run(paths, out / "timed")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes()}


def spawn(side: str, args: argparse.Namespace, **kwargs) -> dict:
    """Run `timed_child` in a fresh spawned process; {"error": message} when that side failed."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(timed_child, side, device=args.device, threads=args.threads, **kwargs).result()
        except Exception as exc:  # a side that cannot run is reported in the table, not fatal
            return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}


def compare(name: str, args, paths, prompts, precision: str, overlay: bool, repeats: int, work: Path,
            sides: tuple[str, ...] = ("ours", "reference")) -> dict:
    """Alternate the sides for `repeats` rounds; print one line and return the medians per side."""
    busy = 0.0 if args.quick else cpu_busy()
    if busy > 0.1:
        print(f"  warning: other processes kept {busy:.0%} of the CPUs busy before [{name}]: timings will suffer")
    jobs = [(side, dict(ckpt=args.cache, paths=paths, prompts=prompts, overlay=overlay, out=work / f"{name}-{side}-{r}",
                        precision=precision if side == "ours" else "fp32")) for r in range(repeats) for side in sides]
    with ThreadPoolExecutor(len(jobs) if args.quick else 1) as pool:  # --quick: all at once, timings be damned
        results = list(pool.map(lambda job: spawn(job[0], args, **job[1]), jobs))
    runs = {side: [result for (s, _), result in zip(jobs, results, strict=True) if s == side] for side in sides}
    row = {"name": name, "images": len(paths), "out": {side: work / f"{name}-{side}-0" / "timed" for side in sides}}
    parts = []
    for side, results in runs.items():
        errors = [r["error"] for r in results if "error" in r]
        seconds = None if errors else statistics.median(r["seconds"] for r in results)
        row[side] = {"error": errors[0]} if errors else {"seconds": seconds, "ips": len(paths) / seconds,
                                                         "peak_rss": max(r["peak_rss"] for r in results)}
        rounds = "/".join(f"{r['seconds']:.2f}" for r in results) if not errors else ""
        parts.append(f"{side} FAILED ({errors[0]})" if errors else f"{side} {row[side]['ips']:.3f} img/s "
                     f"({rounds} s), peak RSS {row[side]['peak_rss'] / GB:.2f} GB")
    if len(sides) == 2 and not any("error" in row[side] for side in sides):
        row["ratio"] = row["ours"]["ips"] / row["reference"]["ips"]
        parts.append(f"ratio {row['ratio']:.1f}x")
    label = f"{len(paths)} img x {len(prompts)} prompts, ours {precision}, overlays {'on' if overlay else 'off'}"
    print(f"[{name}] {label}:", " | ".join(parts), flush=True)
    return row


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of CPU time that other processes used over `seconds` (0 where /proc/stat is missing)."""
    def sample() -> list[int]:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(value) for value in stat.readline().split()[1:]]
    try:
        before, _, after = sample(), time.sleep(seconds), sample()
    except OSError:
        return 0.0
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return 1 - (delta[3] + delta[4]) / max(sum(delta[:8]), 1)  # idle + iowait; guest time is already in user


def matmul_rate(device: str, dtype_name: str, size: int, tries: int = 5) -> float:
    """Best-of-`tries` FLOP/s of a square matmul in the given dtype."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(tries + 1):
        sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


VIT_B16 = {"hidden_size": 768, "intermediate_size": 3072, "patch_size": 16}  # the published image tower


def floor_multiple(args, row: dict, chosen: str) -> float | None:
    """Print the matmul rate and the FLOP floor; return ours' seconds per image over the floor."""
    dtype = chosen.split()[0] if chosen.split()[0] in ("fp32", "bf16", "fp16") else "fp32"
    rate = matmul_rate(args.device, dtype, 1024 if args.quick else 4096)
    flops = vision_flops(VIT_B16, 352, 10)
    floor = flops / rate
    print(f"[floor] {dtype} matmul {rate / 1e9:.0f} GFLOP/s; ViT-B/16 @352, 10 layers = "
          f"{flops / 1e9:.1f} GFLOP -> floor {floor * 1e3:.0f} ms/img")
    if "error" in row["ours"]:
        return None
    per_image = row["ours"]["seconds"] / row["images"]
    print(f"[floor] ours {per_image * 1e3:.0f} ms/img = {per_image / floor:.1f}x the floor")
    return per_image / floor


def agreement(name: str, paths, prompts, row_a: dict, side_a: str, row_b: dict, side_b: str) -> float | None:
    """Print and return the fraction of equal pixels over all the masks two runs wrote."""
    if "error" in row_a[side_a] or "error" in row_b[side_b]:
        return None
    equal = total = foreground = 0
    for name_a, name_b in zip(mask_names(paths, prompts, side_a), mask_names(paths, prompts, side_b), strict=True):
        a = np.asarray(Image.open(row_a["out"][side_a] / name_a)) > 127
        b = np.asarray(Image.open(row_b["out"][side_b] / name_b)) > 127
        equal, total, foreground = equal + np.count_nonzero(a == b), total + a.size, foreground + np.count_nonzero(a)
    print(f"[agreement] {name}: {equal / total:.4%} equal pixels (foreground {foreground / total:.1%} of pixels)")
    return equal / total


def goal(name: str, value: float | None, target: float, higher: bool, fmt: str) -> tuple[str, str, str, str]:
    target_text = ("≥ " if higher else "≤ ") + fmt.format(target)
    if value is None:
        return name, "n/a", target_text, "FAIL"
    passed = value >= target if higher else value <= target
    return name, fmt.format(value), target_text, "PASS" if passed else "FAIL"


def run_wall(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole process; raises with its last stderr line when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[2:4]} exited {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}")
    return seconds


def scenario_s(args, work: Path) -> list[tuple]:
    """One image, one prompt, whole processes: `clipseg segment` against the reference script."""
    photo = make_images(work / "images-s", 1, [QUICK_SIZES[0] if args.quick else SINGLE_SIZE])[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    python = sys.executable
    def ours(prompt: str, out: Path) -> list[str]:
        return [python, "-m", "clipseg_cli", "segment", str(photo), prompt, "--weights", str(args.cache), "-f", "-q",
                "--device", args.device, "-o", str(out)]

    reference = [python, str(HERE / "reference_segment.py"), str(args.cache), str(photo), "red car"]
    run_wall(ours("warm up", work / "s-warmup"), env)  # exported graphs (if any) into the cache, files in page cache
    rounds = args.repeats or (1 if args.quick else 5)
    times: dict[str, list[float]] = {"ours": [], "ours, prompt seen before": [], "reference": [], "--help": [],
                                     "--version": [], "no-op rerun": []}
    for index in range(rounds):  # ours: a prompt never embedded before (the text graph opens), then seen before
        times["ours"].append(run_wall(ours(f"red car{'!' * index}", work / f"s-ours-{index}"), env))
        times["ours, prompt seen before"].append(run_wall(ours("warm up", work / f"s-seen-{index}"), env))
        times["no-op rerun"].append(run_wall([arg for arg in ours("warm up", work / f"s-seen-{index}") if arg != "-f"],
                                             env))  # the outputs exist: skipped
        times["reference"].append(run_wall([*reference, str(work / f"s-reference-{index}")], env))
        for flag in ("--help", "--version"):
            times[flag].append(run_wall([python, "-m", "clipseg_cli", flag], env))
    median = {side: statistics.median(values) for side, values in times.items()}
    ratio = median["reference"] / median["ours"]
    print(f"[s] 1 image {Image.open(photo).size} x 1 prompt, whole process: ours {median['ours']:.2f} s "
          f"({median['ours, prompt seen before']:.2f} s with a prompt seen before), "
          f"reference {median['reference']:.2f} s ({'/'.join(f'{t:.2f}' for t in times['reference'])}), "
          f"ratio {ratio:.1f}x; no-op rerun {median['no-op rerun']:.2f} s; --help {median['--help']:.2f} s, "
          f"--version {median['--version']:.2f} s", flush=True)
    a = np.asarray(Image.open(work / "s-ours-0" / f"{photo.stem}.red-car.mask.png")) > 127
    b = np.asarray(Image.open(work / "s-reference-0" / f"{photo.stem}.mask.png")) > 127
    print(f"[agreement] s: ours (auto) = reference: {np.mean(a == b):.4%} equal pixels")
    return [goal("1: first mask, segment whole process ours/ref", ratio, 5, True, "{:.1f}x"),
            goal("1: first mask, segment wall time (s)", median["ours"], 1.5, False, "{:.2f}"),
            goal("1: no-op rerun, outputs exist (s)", median["no-op rerun"], 0.5, False, "{:.2f}"),
            goal("s: --help (s)", median["--help"], 0.3, False, "{:.2f}"),
            goal("s: --version (s)", median["--version"], 0.3, False, "{:.2f}"),
            goal("s: masks ours = reference", float(np.mean(a == b)), 0.9999, True, "{:.4%}")]


def bf16_start_goal(args, work: Path) -> list[tuple]:
    """Goal 4's start: `clipseg segment --precision bf16`, one photo and prompt, its traced programs cached."""
    photo = make_images(work / "images-bf16", 1, [QUICK_SIZES[0] if args.quick else SINGLE_SIZE])[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "clipseg_cli", "segment", str(photo), "red car", "--weights", str(args.cache),
               "--precision", "bf16", "-f", "-q", "-o", str(work / "bf16-start")]
    first = run_wall(command, env)  # traces the programs unless cached
    warm = statistics.median(run_wall(command, env) for _ in range(args.repeats or (1 if args.quick else 3)))
    print(f"[bf16] segment --precision bf16, whole process: {warm:.2f} s with the traced programs cached "
          f"(first run here {first:.2f} s)", flush=True)
    return [goal("4: segment --precision bf16 wall time (s)", warm, 3, False, "{:.2f}")]


def default_change(args, work: Path) -> list[tuple]:
    """What issue 21's new default gains or costs on a CPU with bf16 units, where auto was bf16 on torch before:
    `clipseg batch` as whole processes over 1, 24 and 500 JPEGs x 3 prompts, masks only, auto (now the exact
    class) against --precision bf16 (the old auto), one after the other, the models prepared beforehand."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    counts = (1, 2) if args.quick else (1, 24, 500)
    for count in counts:
        sizes = QUICK_SIZES if args.quick else ([SINGLE_SIZE] if count == 1 else SIZES if count <= 24 else [(640, 480)])
        folder = work / f"images-default-{count}"
        make_images(folder, count, sizes)
        seconds = {}
        for precision in ("auto", "bf16", "auto", "bf16")[: 2 if count > 24 else 4]:
            prompts = [arg for prompt in PROMPTS[:3] for arg in ("-p", prompt)]
            command = [sys.executable, "-m", "clipseg_cli", "batch", str(folder), *prompts,
                       "--weights", str(args.cache), "--precision", precision, "--no-overlay", "-f", "-q",
                       "-o", str(work / f"default-{count}-{precision}")]
            seconds.setdefault(precision, []).append(run_wall(command, env))
        auto, bf16 = (min(seconds[p]) for p in ("auto", "bf16"))
        print(f"[default] {count} JPEG(s) {sorted(set(sizes))} x 3 prompts, whole process: auto (exact) {auto:.2f} s, "
              f"bf16 (the old auto on bf16 CPUs) {bf16:.2f} s: the new default takes {auto / bf16:.2f}x the time",
              flush=True)
    return []


def scenario_a(args, work: Path) -> list[tuple]:
    paths = make_images(work / "images-a", 1, QUICK_SIZES[:1] if args.quick else [(1920, 1080)])
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    row = compare("a", args, paths, prompts, "fp32", False, args.repeats or (1 if args.quick else 5), work)
    return [goal("a: speed ours/ref, fp32", row.get("ratio"), 5, True, "{:.1f}x")]


def chosen_precision(args) -> str:
    """What ours' --precision resolves to here (`choose_runtime`'s words, with the runtime where it is ONNX Runtime)."""
    sys.path.insert(0, str(SRC))
    from clipseg_cli.runtime import choose_runtime

    plan = choose_runtime(args.device, args.precision)
    return plan.precision if plan.backend == "torch" else f"{plan.precision} (onnxruntime)"


# ours/ref in b (issue 21): the exact class 6x on CPUs with bf16 units, 5x on AVX2-only ones; the fast class 9x
EXACT_TARGET = {True: 6.0, False: 5.0}
FAST_TARGET = 9.0
# mask agreement with ours fp32 (torch, the reference computation)
B_AGREEMENT = {"fp32 (onnxruntime)": 0.9999, "bf16": 0.99, "fp16": 0.99, "int8 (onnxruntime)": 0.95}


def scenario_b(args, work: Path) -> list[tuple]:
    paths = make_images(work / "images-b", 2 if args.quick else args.images, QUICK_SIZES if args.quick else SIZES)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    print(f"[b] {len(paths)} JPEGs, {megabytes:.1f} MB, sizes {sorted({Image.open(p).size for p in paths})}")
    prompts, repeats = PROMPTS[:2] if args.quick else PROMPTS[:3], args.repeats or 1
    chosen = chosen_precision(args)
    print(f"[b] ours --precision {args.precision} runs {chosen} here")
    row = compare("b", args, paths, prompts, args.precision, False, repeats, work)
    compare("b+overlay", args, paths, prompts, args.precision, True, repeats, work)
    fp32 = row if args.precision == "fp32" else compare("b-fp32", args, paths, prompts, "fp32", False, 1, work,
                                                          sides=("ours",))
    exact = chosen.startswith("fp32")
    target = EXACT_TARGET[bf16_units()] if exact else FAST_TARGET
    name = f"{3 if exact else 4}: batch {'exact' if exact else 'fast'} class ours/ref, {chosen}"
    goals = [goal(name, row.get("ratio"), target, True, "{:.1f}x"),
             goal("3: batch ours peak RSS (GB)", row["ours"]["peak_rss"] / GB if "peak_rss" in row["ours"] else None,
                  1.3, False, "{:.2f}"),
             goal("b: ours s/img / FLOP floor", floor_multiple(args, row, chosen), 3, False, "{:.1f}x")]
    if args.precision != "fp32":
        name = f"b: masks ours {chosen} = fp32"
        goals.append(goal(name, agreement(name, paths, prompts, row, "ours", fp32, "ours"),
                          B_AGREEMENT.get(chosen, 0.99), True, "{:.4%}"))
    if args.device == "cpu" and args.precision == "auto":
        goals += fast_goals(args, work, paths, prompts, row, fp32)
    name = "b: masks ours fp32 = reference"
    goals.append(goal(name, agreement(name, paths, prompts, fp32, "ours", row, "reference"), 0.99, True, "{:.2%}"))
    return goals


def fast_goals(args, work: Path, paths, prompts, row: dict, fp32: dict) -> list[tuple]:
    """Goal 4: ours at --precision fast against the reference timed in `row`, and its masks against ours fp32."""
    args.precision = "fast"
    chosen = chosen_precision(args)
    args.precision = "auto"
    fast = compare("b-fast", args, paths, prompts, "fast", False, args.repeats or 1, work, sides=("ours",))
    ratio = None
    if "error" not in fast["ours"] and "error" not in row["reference"]:
        ratio = row["reference"]["seconds"] / fast["ours"]["seconds"]
        print(f"[b-fast] {chosen}: ratio to the reference of [b]: {ratio:.1f}x")
    name = f"4: batch fast ({chosen}) masks = exact"
    return [goal(f"4: batch fast class ours/ref, {chosen}", ratio, FAST_TARGET, True, "{:.1f}x"),
            goal(name, agreement(name, paths, prompts, fast, "ours", fp32, "ours"), 0.98, True, "{:.4%}")]


def cpu_info() -> tuple[str, list[str]]:
    """Returns: the CPU's model name and its flags, from /proc/cpuinfo ("unknown CPU" and none where unreadable)."""
    name, flags = "unknown CPU", []
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    return name, flags


def cpu_flags() -> str:
    """Returns: the CPU's model name and the flags that pick the precisions (avx2, AVX-512, bf16 units, VNNI)."""
    name, flags = cpu_info()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{name}, {os.cpu_count()} CPUs, flags: {' '.join(f for f in wanted if f in flags) or 'none of'}"


def bf16_units() -> bool:
    """Returns: whether the CPU has bf16 matrix units (AMX or AVX512-BF16), which set goal 3's target
    (--emulate-avx2 keeps torch off them: none)."""
    emulated = any(os.environ.get(name) == value for name, value in AVX2.items())
    return not emulated and bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()[1]))


def export_goal(args, work: Path) -> list[tuple]:
    """Goal 2: the one-time export of the exact class's graphs into an empty cache, one whole process."""
    env = {**os.environ, "CLIPSEG_CACHE": str(work / "fresh-cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    code = f"from clipseg_cli.backends.ort import prepare_graphs; prepare_graphs({str(args.cache)!r}, progress=False)"
    seconds = run_wall([sys.executable, "-c", code], env)
    print(f"[export] the one-time export (segment and text graphs, as download-weights --prepare): {seconds:.1f} s")
    return [goal("2: first run ever, one-time export (s)", seconds, 8, False, "{:.1f}")]


def vision_flops(config: dict, side: int, layers: int) -> float:
    """2 x MACs of the image tower at side x side up to `layers`: patch embedding, linears, QK^T and AV."""
    hidden, mlp, patch = config["hidden_size"], config["intermediate_size"], config["patch_size"]
    patches = (side // patch) ** 2
    tokens = patches + 1
    per_layer = tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 2 * tokens * tokens * hidden
    return 2.0 * (patches * 3 * patch * patch * hidden + layers * per_layer)


def tower_goal(args) -> list[tuple]:
    """Goal 5: the exact class's image tower (ONNX Runtime's segment graph, 4 images x 1 prompt) in GFLOP/s against
    this CPU's fp32 GEMM peak (torch's matmul). The decoder's work is not counted: the figure is a lower bound."""
    sys.path.insert(0, str(SRC))
    from clipseg_cli.backends.graph_cache import entry_dir, graph_path
    from clipseg_cli.backends.ort import _session, prepare_graphs

    prepare_graphs(args.cache, progress=False)
    config = json.loads((args.cache / "config.json").read_text())
    side = PREPROCESSOR["size"]["height"]
    flops = 4 * vision_flops(config["vision_config"], side, max(config.get("extract_layers", [3, 6, 9])) + 1)
    session = _session(graph_path(entry_dir(args.cache), "segment", "fp32"))
    inputs = {"pixel_values": np.random.default_rng(0).normal(size=(4, 3, side, side)).astype(np.float32),
              "conditional": np.zeros((1, config.get("projection_dim", 512)), np.float32)}
    size = 1024 if args.quick else 4096
    peak = matmul_rate("cpu", "fp32", size)  # before and after the tower, the best: other jobs only lower it
    session.run(None, inputs)
    best = min(_timed(lambda: session.run(None, inputs)) for _ in range(3))
    peak = max(peak, matmul_rate("cpu", "fp32", size))
    achieved = flops / best
    print(f"[tower] image tower {flops / 4e9:.1f} GFLOP/img, 4 images in {best * 1e3:.0f} ms: {achieved / 1e9:.0f} "
          f"GFLOP/s against an fp32 GEMM peak of {peak / 1e9:.0f} GFLOP/s ({achieved / peak:.0%})")
    return [goal("5: image tower / fp32 GEMM peak", achieved / peak, 0.7, True, "{:.0%}")]


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("s", "export", "a", "b", "tower", "default", "all"), default="all",
                        help="s: `clipseg segment` 1 image x 1 prompt, whole processes; a: 1 image x 5 prompts, fp32; "
                             "b: 24 images x 3 prompts, ours at --precision (and fast); export: the one-time export; "
                             "tower: the image tower against the fp32 GEMM peak; default: auto against bf16 (the old "
                             "default on bf16 CPUs) at 1, 24 and 500 images (not part of all)")
    parser.add_argument("--repeats", type=int, help="timed rounds per side (default: 5 for a, 1 for b)")
    parser.add_argument("--images", type=int, default=24, help="images in scenario b")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for both sides")
    parser.add_argument("--precision", default="auto", choices=("auto", "fast", "fp32", "bf16", "fp16", "int8"),
                        help="ours' precision in scenario b (the reference is always fp32)")
    parser.add_argument("--threads", type=int, help="torch threads in each child (default: torch's)")
    parser.add_argument("--cache", type=Path, help="checkpoint folder (default: benchmarks/.cache/...)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 small images x 2 prompts, narrow towers")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder of images and outputs")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="both sides as on an AVX2-only CPU: " + " ".join(f"{k}={v}" for k, v in AVX2.items())
                        + " (ONNX Runtime has no such switch: it still uses AVX-512/VNNI where present)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    os.environ.setdefault("CLIPSEG_CACHE", str(HERE / ".cache" / "clipseg"))  # exported graphs, built once
    if args.emulate_avx2:
        os.environ.update(AVX2)
        print("emulating an AVX2-only CPU for torch: " + " ".join(f"{k}={v}" for k, v in AVX2.items()))
    args.cache = args.cache or HERE / ".cache" / ("quick-rd64-refined" if args.quick else "full-rd64-refined")
    build_checkpoint(args.cache, tiny=args.quick)
    # our modules' bytecode, as `pip install` leaves it: otherwise, under PYTHONDONTWRITEBYTECODE, each timed
    # whole process would compile them again (0.1-0.2 s) while the reference's come compiled from site-packages
    compileall.compile_dir(SRC, quiet=1)
    print(f"CPU: {cpu_flags()}; bf16 units: {'yes' if bf16_units() else 'no'}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="clipseg-bench-"))
    try:
        goals = export_goal(args, work) if args.scenario in ("export", "all") and args.device == "cpu" else []
        goals += scenario_s(args, work) if args.scenario in ("s", "all") else []
        goals += bf16_start_goal(args, work) if args.scenario in ("s", "all") and args.device == "cpu" else []
        goals += scenario_a(args, work) if args.scenario in ("a", "all") else []
        goals += scenario_b(args, work) if args.scenario in ("b", "all") else []
        goals += tower_goal(args) if args.scenario in ("tower", "all") and args.device == "cpu" else []
        goals += default_change(args, work) if args.scenario == "default" else []
    finally:
        if args.keep:
            print(f"images and outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    width = max((len(g[0]) for g in goals), default=0)
    print(f"\nsummary on {cpu_flags()}" + (" (--quick: tiny model, indicative only)" if args.quick else ""))
    for name, value, target, verdict in goals:
        verdict = "not judged in quick mode" if args.quick else verdict  # a tiny model says nothing of the goals
        print(f"  {name:<{width}}  {value:>10}  {target:>9}  {verdict}")
    return 0 if args.quick or all(g[3] == "PASS" for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
