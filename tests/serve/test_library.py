"""The server's in-memory path against the files ``Job.segment`` writes, in process: the same bytes for uploads
the CLI decodes in its own ways (a rotated JPEG, a JPEG decoded at reduced scale, a 16-bit PNG), every file kind."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import noise

pytest.importorskip("fastapi", reason="clipseg serve needs the serve extra")

from clipseg_cli.serve.library import Loaded, Options, Upload, run_job

pytestmark = pytest.mark.usefixtures("offline")


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: decoded upright, 40 wide and 64 high
    out = BytesIO()
    noise((64, 40), seed=5).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def big_jpeg() -> bytes:
    out = BytesIO()
    noise((700, 500), seed=6).save(out, "JPEG", quality=90)  # decoded at reduced scale by the fast precisions
    return out.getvalue()


def sixteen_bit_png() -> bytes:
    out = BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 65535, (30, 50), dtype=np.uint16)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("precision", "data", "options"), [
    ("fp32", rotated_jpeg(), {"overlay": True, "cutout": True}),
    ("fp32", sixteen_bit_png(), {"soft": True, "cutout": True, "blur": 1.5}),
    ("fp32", rotated_jpeg(), {"union": True, "negatives": ("sky",), "invert": True}),
    ("int8", big_jpeg(), {"dilate": 2}),  # the mask alone: a fast precision decodes the JPEG at reduced scale
], ids=["rotated-jpeg", "16-bit-png", "union-negative", "int8-draft"])
def test_uploads_answered_from_memory_are_the_files_segment_writes(checkpoint, tmp_path, precision, data, options):
    from clipseg_cli.predictor import ModelSpec

    segmenter = ModelSpec(checkpoint, "cpu", precision).load(progress=False)
    request = Options(("car", "tree"), **options)
    job = request.job()
    image = tmp_path / "upload.jpg"
    image.write_bytes(data)
    written = list(job.segment(segmenter, [image], tmp_path / "out"))
    answers = run_job(Loaded(segmenter), job, [Upload(data, "upload.jpg")])[0]
    assert [answer.result.prompt for answer in answers] == [result.prompt for result in written]
    for answer, result in zip(answers, written, strict=True):
        assert result.status == "ok", result.error
        stats, expected = dict(answer.result.stats), dict(result.stats)
        assert stats.pop("mean_probability") == pytest.approx(expected.pop("mean_probability"), rel=1e-6)  # sums
        assert stats == expected
        kinds = [kind for kind in ("mask", "overlay", "cutout") if getattr(result, kind)]
        assert sorted(answer.files) == sorted(kinds)
        for kind in kinds:
            assert answer.files[kind] == Path(getattr(result, kind)).read_bytes(), kind


def test_an_upload_that_is_no_image_fails_alone_named_by_its_label(checkpoint):
    from clipseg_cli.predictor import ModelSpec

    segmenter = ModelSpec(checkpoint, "cpu", "fp32").load(progress=False)
    answers = run_job(Loaded(segmenter), Options(("car",)).job(), [Upload(b"GIF89a no", "bad.gif"),
                                                                    Upload(rotated_jpeg(), "good.jpg")])
    assert str(answers[0]).startswith("bad.gif: ") and "\n" not in str(answers[0])
    assert answers[1][0].files["mask"].startswith(b"\x89PNG")
