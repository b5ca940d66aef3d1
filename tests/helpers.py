"""What tests share: running the CLI as a user does, making images, reading what was written.

Fixtures live in conftest.py; the tiny checkpoints in factory.py; the fake Hub in hub_server.py.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import main

SHARD_PROMPTS = ["-p", "car", "-p", "tree"]


@dataclass
class Outcome:
    """What a user sees of one run: exit code, stdout and stderr."""

    code: int
    stdout: str
    stderr: str

    def records(self) -> list[dict]:
        """The JSON lines of stdout; fails the test on any line that is not a JSON object."""
        records = [json.loads(line) for line in self.stdout.splitlines()]
        assert all(isinstance(record, dict) for record in records)
        return records

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def clipseg(*args: object, stdin: str | None = None) -> Outcome:
    """Run ``clipseg ARGS`` in-process through ``main``, with stdin, stdout and stderr captured apart."""
    with CliRunner().isolation(input=stdin) as (stdout, stderr, _):
        code = main([str(arg) for arg in args])
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, stdout.getvalue().decode(), stderr.getvalue().decode())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONIOENCODING": "utf-8", **extra}
    env.pop("CLIPSEG_DEBUG", None)
    return env


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random RGB image of (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def pixels(path: Path | str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The pixels of a PNG we wrote, after checking its mode and size."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert (image.mode, image.size) == (mode, size), path
        return np.asarray(image)


def binary_mask(path: Path | str, size: tuple[int, int]) -> np.ndarray:
    """A mask's pixels as bool, after checking it is mode L with only 0 and 255."""
    mask = pixels(path, "L", size)
    assert set(np.unique(mask)) <= {0, 255}, path
    return mask == 255


def names(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}



# ---- shards and Ray: one small tree of inputs, run whole or in parts ----------------------------------


def make_folder(root: Path) -> Path:
    """Seven small images in a tree (two share a stem), and one broken file."""
    folder = root / "photos"
    for index, name in enumerate(["a.png", "b.jpg", "c.png", "same.png", "same.jpg", "sub/d.png", "sub/deep/e.png"]):
        save(noise((40 + 4 * index, 30), seed=index), folder / name)
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def files(folder: Path) -> dict[str, bytes]:
    """Every output file under ``folder`` by relative path, leaving out the shards' own records."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and ".clipseg-shards" not in path.parts}


def run_batch(folder: Path, out: Path, checkpoint: Path, *args: object):
    return clipseg("batch", folder, "-r", *SHARD_PROMPTS, "-o", out, "--weights", checkpoint, "--precision", "fp32",
                   "--json", *args)


def same_records(records: list[dict], out: Path) -> list[str]:
    """The JSON records with the output folder left out of their paths, sorted: comparable across runs."""
    return sorted(json.dumps(record, sort_keys=True).replace(str(out), "OUT") for record in records)


# ---- runs that a test stops with a signal: held until the signal has landed -------------------------------------

HELD_PIPE_BYTES = 4096  # the smallest pipe: a --json run that nobody reads waits after a dozen lines


def default_signals(*ignored: int) -> None:
    """In a child before it runs: SIGINT, SIGHUP and SIGTERM at their defaults, as from an interactive shell,
    except those in ``ignored`` (`nohup` ignores SIGHUP).

    A test run started in the background (`pytest &` ignores SIGINT) or under nohup (SIGHUP) would
    otherwise pass its ignored signals on, and the run under test would never see the signal.
    """
    import signal

    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)


def start_held(command: list[str], ignored: tuple[int, ...] = ()):
    """Start a run whose stdout goes to a small pipe that nobody reads until `read_all`.

    A run that prints more than HELD_PIPE_BYTES (``--json``) cannot finish before the test reads:
    it waits at its next line, whatever the machine's load.

    Arguments:
        ignored: signals the run starts with ignored (see `default_signals`).

    Returns:
        The process (stderr a pipe) and the read end of its stdout.
    """
    import fcntl
    import subprocess

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, HELD_PIPE_BYTES)
    process = subprocess.Popen(command, env=subprocess_env(), stdout=write_end, stderr=subprocess.PIPE,
                               preexec_fn=lambda: default_signals(*ignored))
    os.close(write_end)
    return process, read_end


def wait_until_held(process, read_end: int, timeout: float = 300) -> None:
    """Wait until the run's stdout pipe is full: it has done some work and waits to print its next line."""
    import fcntl
    import termios
    import time

    deadline = time.monotonic() + timeout
    unread = bytearray(4)
    while True:
        fcntl.ioctl(read_end, termios.FIONREAD, unread)
        if int.from_bytes(unread, sys.byteorder) > HELD_PIPE_BYTES - 1024:  # no room for another JSON line
            return
        assert process.poll() is None, "the run ended before its stdout pipe was full"
        assert time.monotonic() < deadline, "the run did not fill its stdout pipe in time"
        time.sleep(0.02)


def read_all(read_end: int):
    """Read a pipe to its end in a thread; the bytes land in the returned list once the thread is joined.

    Returns:
        (the reading thread, the list).
    """
    import threading

    chunks: list[bytes] = []

    def read() -> None:
        with os.fdopen(read_end, "rb") as stream:
            chunks.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, chunks


def process_tree(root: int) -> list[int]:
    """Returns: ``root`` and every process below it (read from /proc, Linux only)."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(pid))
    found, todo = [], [root]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def listening_sockets(root: int) -> list[tuple[str, int, str]]:
    """The TCP sockets that ``root``'s process tree listens on, and UDP sockets it has bound (Linux only).

    Returns:
        (address, port, process name) of each: ``0.0.0.0`` or ``::`` is every interface.
    """
    import ipaddress

    owners: dict[str, int] = {}
    for pid in process_tree(root):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):  # a socket closed meanwhile
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners[link[len("socket:[") : -1]] = pid
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as rows:
            for row in list(rows)[1:]:
                local, state, inode = row.split()[1], row.split()[3], row.split()[9]
                if inode not in owners or (table.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                    continue
                hexadecimal, port = local.split(":")
                raw = bytes.fromhex(hexadecimal)  # 32-bit words in host order (little-endian on x86 and arm)
                packed = b"".join(raw[start : start + 4][::-1] for start in range(0, len(raw), 4))
                name = Path(f"/proc/{owners[inode]}/comm")
                found.append((str(ipaddress.ip_address(packed)), int(port, 16),
                              name.read_text().strip() if name.exists() else "?"))
    return found


def is_loopback(address: str) -> bool:
    """Whether an address is loopback: 127.0.0.0/8, ::1, or 127.x written as IPv6 (``::ffff:127.0.0.1``)."""
    import ipaddress

    found = ipaddress.ip_address(address)
    return found.is_loopback or bool(getattr(found, "ipv4_mapped", None) and found.ipv4_mapped.is_loopback)

