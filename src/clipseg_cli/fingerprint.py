"""What made an output: a short record stored in each PNG we write, so that a rerun reuses only
outputs made from the same input file, prompt, weights, precision and settings.

The record is an iTXt chunk (UTF-8 text) with the key ``clipseg`` before the image data (``exiftool`` and
``identify -verbose`` show it): a JSON object of a few readable fields and a sha256 ``digest``
of all of them. Reading it takes the first 16 KB of the file, never the pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from clipseg_cli.constants import (
    CONFIG_FILE,
    MERGES_FILE,
    PICKLE_FILE,
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
    SAFETENSORS_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
)
from clipseg_cli.errors import ClipSegError
from clipseg_cli.imaging.visual_prompt import VisualPrompt
from clipseg_cli.imaging.writing import PNG_SIGNATURE, atomic_write

PNG_KEY = "clipseg"
RECORD_VERSION = 1
_HEAD_BYTES = 1 << 14
_READ_BLOCK = 1 << 20
_MEMO_FOLDER = "content-sha256"  # beside the graph cache: weights' sha256 by (path, inode, size, mtime, ctime)
_SETTLED_NS = 2_000_000_000  # a file changed this recently may change again within one timestamp tick
_memo: dict[str, str] = {}
_SHOWN_PROMPT_CHARS = 200
# Small files of a checkpoint that change the outputs (config, preprocessing of both layouts, tokenizer).
_CHECKPOINT_FILES = (CONFIG_FILE, PREPROCESSOR_FILE, PROCESSOR_FILE, VOCAB_FILE, MERGES_FILE, TOKENIZER_FILE,
                     "tokenizer_config.json", "special_tokens_map.json")
_WEIGHTS_FILES = (SAFETENSORS_FILE, PICKLE_FILE)  # the first present is the one loaded
# Record field -> the reason given when it differs, in the order they are compared.
_REASONS = {"input": "input file changed", "prompt_sha256": "prompt changed", "weights": "weights changed",
            "precision": "precision changed", "device": "device changed", "output": "output kind changed"}
# A runtime's name of its precision -> the class a record stores: fp32 on any runtime and CPU is one class,
# "exact" (masks equal to 99.99 %), accepted everywhere. Older records stored the names: read as their classes.
PRECISION_CLASSES = {"float32": "exact", "float32-onnxruntime": "exact", "bfloat16": "bf16", "float16": "fp16",
                     "int8-onnxruntime": "int8"}
# Why an output made by an older meaning of auto or fast is redone, once: auto on a CPU with bf16 units was bf16
# (records of that release name "bfloat16") before it meant the exact class; fast on CPUs with AVX512-BF16 but no
# AMX was bf16 before it meant int8 there.
_OLD_AUTO_REASON = ("precision changed (bf16 -> exact: --precision auto is now exact on every CPU; "
                    "--precision bf16 keeps bf16)")
_OLD_FAST_REASON = ("precision changed (bf16 -> int8: --precision fast is now int8 on CPUs without AMX, "
                    "AVX512-BF16 ones included; --precision bf16 keeps bf16)")


def file_sha256(path: Path) -> str:
    """Returns: the hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """Returns: the hex sha256 of a text's UTF-8 bytes (lone surrogates kept)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def checkpoint_digest(directory: Path) -> str:
    """What names a checkpoint: the sha256 of its weights' bytes and the bytes of its config,
    preprocessing and tokenizer files. Any change of any byte gives another digest; a copy
    elsewhere (same bytes) gives the same one.

    Returns:
        24 hex characters.
    """
    digest = hashlib.sha256()
    for name in _WEIGHTS_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest.update(f"{name}\0{content_sha256(path)}\0".encode())
            break
    for name in _CHECKPOINT_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:24]


def content_sha256(path: Path) -> str:
    """A large file's sha256, read once and remembered under (path, device, inode, size, mtime, ctime).

    Any write to a file sets its ctime to the clock, and no user tool sets a ctime back (``cp -p``,
    ``rsync -a``, ``tar x`` and ``os.utime`` keep or set the mtime only), so a remembered sum is only
    used for the same bytes. A file changed in the last two seconds is read every time (its next
    change could fall within the same timestamp tick) by each new process. The memo is one small file per state in
    ``content-sha256/`` beside the graph cache, holding the sum and a check of it bound to the file's state (a memo
    whose check fails is not used); a memo that cannot be written only costs the reading.

    Returns:
        64 hex characters.
    """
    info = os.stat(path)
    state = (f"{os.fsdecode(Path(path).resolve())}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0"
             f"{info.st_mtime_ns}\0{info.st_ctime_ns}")
    key = text_sha256(state)[:40]
    if key in _memo:
        return _memo[key]
    memo = _memo_folder() / key
    try:
        found = _checked_memo(memo.read_text(encoding="ascii"), state)
    except (OSError, UnicodeDecodeError):
        found = None
    if found is not None:
        _memo[key] = found
        return found
    found = _memo[key] = file_sha256(path)
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLED_NS:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            line = f"{found} {_memo_check(state, found)}\n"
            atomic_write(memo, lambda handle: handle.write(line.encode("ascii")))
        except OSError:
            pass  # a read-only cache: the next run reads the file again
    return found


def _memo_check(state: str, sha256: str) -> str:
    """Returns: the check a memo stores beside its sum: 16 hex characters of the sha256 of the file's state and sum."""
    return text_sha256(f"{state}\0{sha256}")[:16]


def _checked_memo(text: str, state: str) -> str | None:
    """The sum a memo file holds, when its check fits the file's state: a memo edited, truncated, filled with
    zeros or copied from another file's is never trusted (the file is read again and the memo rewritten).

    Returns:
        64 hex characters, or None.
    """
    parts = text.split()
    if len(parts) != 2 or len(parts[0]) != 64 or any(c not in "0123456789abcdef" for c in parts[0]):
        return None
    return parts[0] if parts[1] == _memo_check(state, parts[0]) else None


def _memo_folder() -> Path:
    """Returns: ``content-sha256/`` in clipseg's cache root (``$CLIPSEG_CACHE``, else ``$HF_HOME/clipseg``)."""
    from clipseg_cli.cachedir import cache_root

    return cache_root() / _MEMO_FOLDER


def prompt_key(prompt: object) -> str:
    """A text that tells prompts apart: texts as they are, images by their pixels, averages by their parts.

    Returns:
        ``text:...``, ``image:<sha256>`` or ``mean(...)``.
    """
    if isinstance(prompt, str):
        return "text:" + prompt
    if isinstance(prompt, Image.Image):
        pixels = hashlib.sha256(f"{prompt.mode}:{prompt.size}:".encode() + prompt.tobytes()).hexdigest()
        return "image:" + pixels
    if isinstance(prompt, VisualPrompt):
        return prompt.key()
    parts = getattr(prompt, "parts", None)
    if parts is not None:
        return "mean(" + ", ".join(prompt_key(part) for part in parts) + ")"  # "mean": the key of earlier runs
    raise ClipSegError(f"a prompt must be a text, an image, a VisualPrompt or an Average, got {type(prompt).__name__}")


def make_record(kind: str, *, input_sha256: str, prompt: str, prompt_text: str, model: Mapping[str, str],
                settings: Mapping[str, object]) -> str:
    """The record stored in one output file.

    Arguments:
        kind: mask, soft mask, overlay, cutout or soft cutout.
        prompt: the full description of
            what was asked (prompt keys, negatives, union); prompt_text: the readable prompt.
        model: weights, precision (recorded as its class, `PRECISION_CLASSES`) and device.
        settings: every
            option that changes the pixels.

    Returns:
        One line of JSON.
    """
    shown = prompt_text[:_SHOWN_PROMPT_CHARS].encode("utf-8", "backslashreplace").decode()  # undecodable bytes
    record = {PNG_KEY: RECORD_VERSION, "output": kind, "input": input_sha256, "prompt": shown,
              "prompt_sha256": text_sha256(prompt)[:32],
              "weights": model["weights"], "precision": PRECISION_CLASSES.get(model["precision"], model["precision"]),
              "device": model["device"],
              "settings": dict(settings)}
    record["digest"] = hashlib.sha256(_canonical(record).encode()).hexdigest()
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def stale_reason(path: Path, expected: str) -> str | None:
    """Why an existing output must be redone, or None when its record matches ``expected``.

    Returns:
        None, or a short reason: "input file changed", "settings changed (threshold)", ...
    """
    try:
        found = read_record(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if found is None:
        return "written by another tool"
    want = json.loads(expected)
    legacy = found.get("precision")
    if isinstance(legacy, str) and legacy in PRECISION_CLASSES:  # an older record: the digest it would have today
        found = {key: value for key, value in found.items() if key != "digest"}
        found["precision"] = PRECISION_CLASSES[legacy]
        found["digest"] = hashlib.sha256(_canonical(found).encode()).hexdigest()
    if found.get("digest") == want["digest"]:
        return None
    for key, reason in _REASONS.items():
        if found.get(key) != want[key]:
            if key == "precision" and legacy == "bfloat16" and want[key] == "exact":
                return _OLD_AUTO_REASON
            if key == "precision" and found.get(key) == "bf16" and want[key] == "int8":
                return _OLD_FAST_REASON
            return reason
    settings = found.get("settings") if isinstance(found.get("settings"), dict) else {}
    changed = sorted(key for key in want["settings"].keys() | settings.keys()
                     if settings.get(key) != want["settings"].get(key))
    return f"settings changed ({', '.join(changed)})" if changed else "fingerprint does not match"


def read_record(path: Path) -> dict | None:
    """The record of a PNG we wrote, from the chunks before its image data.

    Returns:
        The record, or None when the file has none (not a PNG, another tool's, damaged).
    """
    with open(path, "rb") as stream:
        head = stream.read(_HEAD_BYTES)
    if not head.startswith(PNG_SIGNATURE):
        return None
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[offset : offset + 8])
        data = head[offset + 8 : offset + 8 + length]
        crc = head[offset + 8 + length : offset + 12 + length]
        if kind in (b"IDAT", b"IEND") or len(crc) < 4:
            return None
        if kind == b"iTXt" and data.startswith(PNG_KEY.encode() + b"\0\0\0"):
            if struct.unpack(">I", crc)[0] != zlib.crc32(kind + data):
                return None
            fields = data[len(PNG_KEY) + 3 :].split(b"\0", 2)  # language, translated keyword, text
            try:
                record = json.loads(fields[-1].decode())
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
        offset += 12 + length
    return None


def _canonical(record: Mapping[str, object]) -> str:
    return json.dumps(record, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
