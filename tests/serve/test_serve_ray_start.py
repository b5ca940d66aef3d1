"""``clipseg serve --ray`` starting: replicas that cannot fit fail at once, a start that hangs fails after
--ray-timeout with Ray's reason, and Ctrl-C while replicas start stops Ray too; each in one line.

The room check is read first from node listings (no Ray). The hanging start is real: the test holds the
model's graph cache entry exclusively (as ``clipseg cache clear`` does while it removes one), so the replica
waits in its constructor for the shared lock; /proc/locks shows when it waits.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import clipseg, noise, process_tree, save, subprocess_env
from helpers_serve import free_port

pytest.importorskip("ray.serve", reason="clipseg serve --ray needs the serve-ray extra")

from clipseg_cli.errors import ClipSegError
from clipseg_cli.serve.ray import Scale, check_room

pytestmark = pytest.mark.usefixtures("offline")
DEADLINE = 300.0  # seconds a local Ray may take to start or stop on a busy machine


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_room_counts_replicas_that_fit_on_one_node_each() -> None:
    assert check_room(Scale(2, cpus=0.5), [node(2)]) == 4
    assert check_room(Scale(2, cpus=4), [node(4), node(4), node(64, alive=False)]) == 2
    assert check_room(Scale(1, cpus=0), [node(1)]) == math.inf
    assert check_room(Scale(autoscale=(0, 9), cpus=1), [node(1)]) == 1  # its minimum, at least one
    with pytest.raises(ClipSegError) as refused:
        check_room(Scale(2, cpus=4), [node(2)])
    assert str(refused.value) == ("serve --ray: 2 replica(s) of 4 CPU do not fit in this Ray cluster (2 CPU(s) on 1 "
                                  "node(s): room for 0); lower --replicas or --replica-cpus")
    with pytest.raises(ClipSegError, match=r"1 replica\(s\) of 6 CPU .*\(8 CPU\(s\) on 2 node\(s\): room for 0\)"):
        check_room(Scale(1, cpus=6), [node(4), node(4)])  # 8 CPUs, but no node holds 6
    with pytest.raises(ClipSegError, match=r"2 to 4 replica\(s\) .*; lower the --autoscale minimum or --replica-cpus"):
        check_room(Scale(autoscale=(2, 4), cpus=2), [node(3)])
    with pytest.raises(ClipSegError, match=r"of 1 CPU and 1 GPU .*\(2 CPU\(s\) and 0 GPU\(s\).*use --device cpu"):
        check_room(Scale(1, cpus=1, gpus=1), [node(2)])


def test_joining_a_cluster_needs_a_token_or_no_auth(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPSEG_TOKEN", raising=False)
    outcome = clipseg("serve", "--ray-address", "auto", "--weights", checkpoint)  # refused before Ray is asked
    assert outcome.code == 2
    assert outcome.errors() == ["error: --ray-address auto lets other machines in: give --token (or CLIPSEG_TOKEN), "
                                "or --no-auth to serve without one"]


def launch(checkpoint: Path, folder: Path, *args: object, **env: str) -> tuple[subprocess.Popen, Path]:
    """Start ``clipseg serve --ray`` in a session of its own (a terminal's Ctrl-C reaches its whole group)."""
    stderr = folder / "serve.err"
    command = [sys.executable, "-m", "clipseg_cli", "serve", "--ray", "--weights", str(checkpoint), "--port",
               str(free_port()), *map(str, args)]
    with stderr.open("w") as err:
        process = subprocess.Popen(command, env=subprocess_env(**env), stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    return process, stderr


def finish(process: subprocess.Popen, stderr: Path) -> tuple[int, list[str]]:
    """Returns: the exit code and the stderr lines of a server expected to stop by itself."""
    try:
        code = process.wait(DEADLINE)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return code, stderr.read_text().splitlines()


@pytest.mark.slow
def test_replicas_the_cluster_cannot_hold_fail_at_once_in_one_line(checkpoint: Path, tmp_path: Path) -> None:
    cpus = os.cpu_count() or 1  # two replicas of all this machine's CPUs never fit on its one node
    process, stderr = launch(checkpoint, tmp_path, "--replicas", 2, "--replica-cpus", cpus)
    code, lines = finish(process, stderr)
    assert code == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:], lines
    assert errors[0].startswith(f"error: serve --ray: 2 replica(s) of {cpus} CPU do not fit in this Ray cluster (")
    assert errors[0].endswith("); lower --replicas or --replica-cpus")


@pytest.fixture(scope="module")
def cached(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of the module's own holding the checkpoint's graphs (made once, by ``clipseg segment``)."""
    folder = tmp_path_factory.mktemp("serve-ray-cache")
    image = save(noise((40, 30)), folder / "image.png")
    previous = os.environ.get("CLIPSEG_CACHE")
    os.environ["CLIPSEG_CACHE"] = str(folder / "cache")
    try:
        assert clipseg("segment", image, "car", "--weights", checkpoint, "-o", folder / "out", "-q").code == 0
        yield folder / "cache"
    finally:
        if previous is None:
            del os.environ["CLIPSEG_CACHE"]
        else:
            os.environ["CLIPSEG_CACHE"] = previous


@pytest.fixture
def held_graphs(cached: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The graph cache entry, held exclusively by this test; yields its lock file."""
    monkeypatch.setenv("CLIPSEG_CACHE", str(cached))
    [lock] = (cached / "onnx").glob("*.lock")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield lock
    finally:
        os.close(fd)


def wait_for_a_waiter(lock: Path, process: subprocess.Popen, stderr: Path) -> None:
    """Return once a process waits for ``lock`` (a replica in its constructor), bounded by DEADLINE."""
    inode = f":{os.stat(lock).st_ino} "
    end = time.monotonic() + DEADLINE
    while not any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()):
        assert process.poll() is None, f"the server exited before a replica waited: {stderr.read_text()}"
        assert time.monotonic() < end, "no replica waited for the held graphs in time"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks")
def test_replicas_that_do_not_start_in_time_fail_with_rays_reason(checkpoint: Path, tmp_path: Path,
                                                                  held_graphs: Path) -> None:
    process, stderr = launch(checkpoint, tmp_path, "--ray-timeout", 20, RAY_SERVE_SLOW_STARTUP_WARNING_S="1",
                             RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S="1")
    wait_for_a_waiter(held_graphs, process, stderr)  # the replica's start hangs from now on
    code, lines = finish(process, stderr)
    assert code == 2
    assert [line for line in lines if line.startswith("clipseg: serve --ray: ")] == [
        "clipseg: serve --ray: starting a local Ray (on 127.0.0.1 only)",
        f"clipseg: serve --ray: starting Ray Serve's HTTP proxy on 127.0.0.1:{launched_port(process)}",
        "clipseg: serve --ray: starting 1 replica(s) of 1 CPU, each loading the model (at most 20 s)"]
    assert lines[-1] == ("error: serve --ray: the replicas did not start within 20 s (--ray-timeout): Deployment "
                         "'Clipseg' in application 'clipseg' has 1 replicas that have taken more than 1s to "
                         "initialize. This may be caused by a slow __init__ or reconfigure method.")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks")
def test_ctrl_c_while_replicas_start_stops_ray_with_a_serve_message(checkpoint: Path, tmp_path: Path,
                                                                    held_graphs: Path) -> None:
    process, stderr = launch(checkpoint, tmp_path, "-q")
    wait_for_a_waiter(held_graphs, process, stderr)
    ray = process_tree(process.pid)[1:]
    assert ray, "the local Ray's processes"
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
    code, lines = finish(process, stderr)
    assert code == 130
    assert lines[-1].startswith("error: interrupted") and "rerun" not in lines[-1], lines
    assert not [line for line in lines if line.startswith("clipseg: serve --ray: ")]  # -q: no stage lines
    end = time.monotonic() + DEADLINE
    while alive := [pid for pid in ray if Path(f"/proc/{pid}").exists() and not zombie(pid)]:
        assert time.monotonic() < end, f"Ray's processes {alive} outlived the server"
        time.sleep(0.1)


def zombie(pid: int) -> bool:
    """Whether a process has ended and waits for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def launched_port(process: subprocess.Popen) -> str:
    """Returns: the --port a launched server was given."""
    return process.args[process.args.index("--port") + 1]
