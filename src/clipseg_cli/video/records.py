"""Skip or redo: each output video carries its fingerprint record, and a rerun compares it with what it would write.

The record is `clipseg_cli.fingerprint.make_record`'s (input bytes, prompt, weights, precision,
device, every setting that changes pixels), with the video's own settings added: the codec, its
options, ``--smooth`` and whether the sound was copied; a file made from a video that broke part way
records ``"complete": false``, so it is redone (and fails again, exit 1) until the input is whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clipseg_cli.fingerprint import make_record
from clipseg_cli.run.outputs import OutputPlan
from clipseg_cli.run.targets import Target
from clipseg_cli.video.assembling import read_video_record
from clipseg_cli.video.encoding import Codec

_REASONS = (("input", "input file changed"), ("prompt_sha256", "prompt changed"), ("weights", "weights changed"),
            ("precision", "precision changed"), ("device", "device changed"), ("output", "output kind changed"))


@dataclass(frozen=True)
class Output:
    """One output video of one (video, target): its kind, file, codec and place among the targets."""

    index: int
    target: Target
    kind: str
    path: Path
    codec: Codec


@dataclass(frozen=True)
class Recorder:
    """What every record of a run holds besides the output itself.

    plan: the files and mask steps. model: the Segmenter's identity. settings: the run's settings
    (`clipseg_cli.run.targets.recorded_settings`). video: the video options recorded (``smooth``, ``audio``).
    """

    plan: OutputPlan
    model: dict[str, str]
    settings: dict[str, object]
    video: dict[str, object]

    def record(self, output: Output, input_sha256: str, *, complete: bool = True) -> str:
        """Returns: the fingerprint record of one output video."""
        video = {**self.video, **output.codec.settings()}
        settings = {**self.settings, **self.plan.looks(output.kind), "video": video}
        if not complete:
            settings["complete"] = False
        return make_record(self.plan.output_kind(output.kind), input_sha256=input_sha256, prompt=output.target.key,
                           prompt_text=output.target.text, model=self.model, settings=settings)


def stale_reason(path: Path, expected: str) -> str | None:
    """Why an existing output video must be redone, or None when its record matches ``expected``.

    Returns:
        None, or a short reason: "input file changed", "settings changed (smooth)", ...
    """
    found = read_video_record(path)
    if found is None:
        return "written by another tool, or not whole"
    want = json.loads(expected)
    if found.get("digest") == want["digest"]:
        return None
    for key, reason in _REASONS:
        if found.get(key) != want[key]:
            return reason
    have = found.get("settings") if isinstance(found.get("settings"), dict) else {}
    changed = _changed(have, want["settings"])
    return f"settings changed ({', '.join(changed)})" if changed else "fingerprint does not match"


def _changed(have: dict, want: dict) -> list[str]:
    """Returns: the settings that differ, those of the video's own named inside it (``smooth``, not ``video``)."""
    changed = []
    for key in sorted(have.keys() | want.keys()):
        if have.get(key) != want.get(key):
            inner = have.get(key), want.get(key)
            if all(isinstance(part, dict) for part in inner):
                changed += _changed(*inner)
            else:
                changed.append(key)
    return changed
