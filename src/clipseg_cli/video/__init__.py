"""``clipseg video``: text-prompted masks, overlays and cut-outs of videos, with their sound, in bounded memory.

The frames run through the same Engine as ``clipseg batch`` (`clipseg_cli.video.frames`); each output
kind has its codec (`clipseg_cli.video.encoding`); outputs are joined from resumable chunks
(`clipseg_cli.video.chunks`, `clipseg_cli.video.assembling`) and skipped by fingerprint
(`clipseg_cli.video.records`). The run over many videos is `run_videos`; per-frame results in memory
are `video_frames`.
"""

from __future__ import annotations

from clipseg_cli.video.files import collect_videos
from clipseg_cli.video.frames import FrameMaps, video_frames
from clipseg_cli.video.reading import BrokenVideo, VideoError, VideoInfo, probe
from clipseg_cli.video.video_run import VideoOptions, VideoResult, run_videos

__all__ = ["BrokenVideo", "FrameMaps", "VideoError", "VideoInfo", "VideoOptions", "VideoResult", "collect_videos",
           "probe", "run_videos", "video_frames"]
