"""The script a user writes by hand for one image and one prompt with transformers (bench.py's scenario s).

    python benchmarks/reference_segment.py CHECKPOINT IMAGE PROMPT OUTPUT_DIR

Writes OUTPUT_DIR/<stem>.mask.png (p >= 0.4) and <stem>.overlay.png, as `clipseg segment` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor


def main(checkpoint: str, image_path: str, prompt: str, output: str) -> None:
    processor = CLIPSegProcessor.from_pretrained(checkpoint)
    model = CLIPSegForImageSegmentation.from_pretrained(checkpoint).eval()
    image = Image.open(image_path).convert("RGB")
    inputs = processor(text=[prompt], images=[image], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits.reshape(1, 1, *inputs["pixel_values"].shape[-2:])
    probability = torch.sigmoid(F.interpolate(logits, size=(image.height, image.width), mode="bilinear"))[0, 0]
    mask = probability.numpy() >= 0.4
    out, stem = Path(output), Path(image_path).stem
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{stem}.mask.png")
    pixels = np.asarray(image, dtype=np.float32)
    tinted = np.where(mask[..., None], pixels * 0.5 + np.float32([127.5, 0, 0]), pixels)
    Image.fromarray(tinted.astype(np.uint8)).save(out / f"{stem}.overlay.png")


if __name__ == "__main__":
    main(*sys.argv[1:5])
