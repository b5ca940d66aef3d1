"""``clipseg serve --ray``: the same app as Ray Serve replicas on a local Ray, talked to through Ray's proxy.

One deployment (two replicas) serves the whole module; it is started as a user starts it, in a
subprocess with a local Ray of its own, and the module's last test stops it with SIGTERM. Waiting
polls the server's stderr and answers, bounded by DEADLINE.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import is_loopback, listening_sockets, noise, save, subprocess_env
from helpers_serve import AUTH, TOKEN, assert_masks_are_segment_files, free_port, post, segment_cli

httpx = pytest.importorskip("httpx", reason="the dev extra's httpx drives the server")
pytest.importorskip("ray.serve", reason="clipseg serve --ray needs the serve-ray extra")

pytestmark = [pytest.mark.usefixtures("offline"), pytest.mark.slow]  # no network, no user cache; servers, Ray
DEADLINE = 300.0  # seconds Ray, its proxy and the replicas may take to start or stop on a busy machine
READY = "Ctrl-C stops"  # the line clipseg serve --ray prints once the application is deployed
REPLICA = "x-clipseg-replica"


@dataclass
class RayServer:
    process: subprocess.Popen
    url: str
    stderr: Path

    def until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` (bounded by DEADLINE) until it holds, the server still running."""
        end = time.monotonic() + DEADLINE
        while not condition():
            assert self.process.poll() is None, f"the server exited waiting for {what}: {self.stderr.read_text()}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.1)


def launch(checkpoint: Path, folder: Path, *args: object) -> tuple[subprocess.Popen, Path, str]:
    """Start ``clipseg serve --ray`` on a free port; returns the process, its stderr file and its URL."""
    port = free_port()
    stderr = folder / f"serve-{port}.err"
    command = [sys.executable, "-m", "clipseg_cli", "serve", "--ray", "--weights", str(checkpoint), "--precision",
               "fp32", "--port", str(port), *map(str, args)]
    with stderr.open("w") as err:
        process = subprocess.Popen(command, env=subprocess_env(CLIPSEG_TOKEN=TOKEN), stdout=subprocess.DEVNULL,
                                   stderr=err)
    return process, stderr, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServer]:
    process, stderr, url = launch(checkpoint, tmp_path_factory.mktemp("serve-ray"), "--replicas", 2,
                                  "--replica-cpus", 0.5, "--batch-wait-ms", 20)
    server = RayServer(process, url, stderr)
    try:
        server.until(lambda: READY in stderr.read_text(), "the application to be deployed")
        yield server
    finally:
        if process.poll() is None:  # the SIGTERM test did not run (or failed): stop it as a user would
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("serve-ray-images")
    return [save(noise((60 + 3 * i, 40 + 2 * i), seed=i), folder / f"photo{i}.png") for i in range(4)]


def test_masks_from_ray_serve_are_the_bytes_clipseg_segment_writes(server, images, checkpoint, tmp_path):
    asked = [(image, prompt) for image in images for prompt in ("car", "tree")]
    assert_masks_are_segment_files(server, asked, images, checkpoint, tmp_path)


def test_json_answer_has_the_files_of_segment_json(server, images, checkpoint, tmp_path):
    records = segment_cli(images[1], tmp_path, checkpoint, "car", "--negative", "tree", "--cutout", "--overlay")
    answer = post(server, images[1], "car", negative="tree", cutout=True, overlay=True,
                  headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    [mask] = answer.json()["masks"]
    for kind in ("mask", "overlay", "cutout"):
        assert base64.b64decode(mask[kind]) == Path(records[0][kind]).read_bytes(), kind


def test_token_is_needed_on_every_route_but_healthz(server, images):
    for method, path in [("GET", "/metrics"), ("GET", "/"), ("POST", "/v1/segment")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(method, server.url + path, headers=headers, timeout=60)
            assert answer.status_code == 401, (path, headers)
            assert "token" in answer.json()["error"]
    assert httpx.get(f"{server.url}/healthz", timeout=60).json() == {"status": "ready"}
    assert httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=60).status_code == 200


@pytest.mark.skipif(sys.platform != "linux", reason="reads the sockets from /proc")
def test_the_local_ray_and_its_replicas_listen_on_loopback_only(server):
    """GCS, raylet, object manager, workers, dashboard agent, metrics, Serve's controller, proxy and replicas."""
    found = listening_sockets(server.process.pid)
    ports = {port for _, port, _ in found}
    assert int(server.url.rsplit(":", 1)[1]) in ports  # the proxy: the listing sees the whole tree
    assert {"gcs_server", "raylet"} <= {name for *_, name in found}
    assert [entry for entry in found if not is_loopback(entry[0])] == []


def test_two_replicas_both_answer_with_the_same_masks(server, images, checkpoint, tmp_path):
    segment_cli(images[0], tmp_path, checkpoint, "car", "--no-overlay")
    expected = (tmp_path / f"{images[0].stem}.car.mask.png").read_bytes()
    answered: dict[str, bytes] = {}
    for _ in range(200):  # Ray's router picks between idle replicas at random: 200 tries all on one are ~2**-199
        answer = post(server, images[0], "car")
        assert answer.status_code == 200, answer.text
        answered[answer.headers[REPLICA]] = answer.content
        if len(answered) == 2:
            break
    assert len(answered) == 2, f"only replica {set(answered)} answered"
    assert all(content == expected for content in answered.values())


def test_bad_weights_are_the_one_line_error_of_the_plain_server(checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    process, stderr, _ = launch(empty, tmp_path)
    assert process.wait(DEADLINE) == 2
    errors = [line for line in stderr.read_text().splitlines() if line.startswith("error:")]
    assert errors == [f"error: {empty / 'config.json'}: missing; a checkpoint directory needs config.json beside "
                      "its weights"]


def test_sigterm_stops_ray_serve_and_exits_0(server):  # last: it stops the module's server
    assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(DEADLINE) == 0, server.stderr.read_text()
    with pytest.raises(httpx.TransportError):  # Ray's proxy went with it
        httpx.get(f"{server.url}/healthz", timeout=10)


# ---- the serve run builder (no Ray needed to build the application) ------------------------------------------


def test_serve_run_builder_needs_a_token_and_known_arguments(checkpoint, monkeypatch):
    from ray.serve import Application

    from clipseg_cli.errors import ClipSegError
    from clipseg_cli.serve.ray import app

    monkeypatch.delenv("CLIPSEG_TOKEN", raising=False)
    with pytest.raises(ClipSegError, match=r"give token=TOKEN \(or CLIPSEG_TOKEN\)"):
        app({"weights": str(checkpoint)})
    with pytest.raises(ClipSegError, match=r"^clipseg_cli\.serve\.ray:app colour: Extra inputs are not permitted"):
        app({"weights": str(checkpoint), "token": TOKEN, "colour": "red"})
    with pytest.raises(ClipSegError, match=r"^autoscale= '3:1': give MIN:MAX"):
        app({"weights": str(checkpoint), "token": TOKEN, "autoscale": "3:1"})
    with pytest.raises(ClipSegError, match=r"^replicas and autoscale: give one"):
        app({"weights": str(checkpoint), "token": TOKEN, "replicas": "2", "autoscale": "1:3"})
    assert isinstance(app({"weights": str(checkpoint), "no_auth": "true"}), Application)
    for token in (" ", "", " padded"):  # a token no client could send: refused as clipseg serve --token refuses it
        with pytest.raises(ClipSegError, match=r"^token= "):
            app({"weights": str(checkpoint), "token": token})
    monkeypatch.setenv("CLIPSEG_TOKEN", TOKEN)
    assert isinstance(app({"weights": str(checkpoint), "autoscale": "1:3"}), Application)
