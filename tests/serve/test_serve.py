"""``clipseg serve``: a real uvicorn server on 127.0.0.1, talked to with httpx (and raw sockets for the limits).

The server runs `clipseg_cli.cli.main` in a subprocess. Tests that must catch requests in flight
start it with a gate (a FIFO): the model thread reads one byte from it before each model call,
so the test decides when work proceeds; waiting is done by polling /healthz or /metrics, bounded.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from helpers import noise, save, subprocess_env
from helpers_serve import AUTH, TOKEN, assert_masks_are_segment_files, free_port, post, segment_cli

httpx = pytest.importorskip("httpx", reason="the dev extra's httpx drives the server")
pytest.importorskip("fastapi", reason="clipseg serve needs the serve extra")

pytestmark = [pytest.mark.usefixtures("offline"), pytest.mark.slow]  # no network, no user cache; servers, Ray
ALLOWED = "http://allowed.example"
DEADLINE = 180.0  # seconds a server may take to start or a condition to come true on a busy machine

# Runs the CLI; with CLIPSEG_TEST_GATE, each model call first reads one byte from that FIFO.
LAUNCHER = """
import os, sys
gate = os.environ.get("CLIPSEG_TEST_GATE")
if gate:
    from clipseg_cli.serve.batching import MicroBatcher
    original, opened = MicroBatcher._run_batch, []
    def gated(self, batch):
        if not opened:
            opened.append(open(gate, "rb", buffering=0))
        opened[0].read(1)
        return original(self, batch)
    MicroBatcher._run_batch = gated
from clipseg_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    gate: int | None = None  # the FIFO's write end: each byte lets one model call run

    def release(self, calls: int) -> None:
        assert self.gate is not None
        os.write(self.gate, b"x" * calls)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=AUTH, timeout=30).text
        return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    def until(self, condition, what: str) -> None:
        """Poll ``condition`` (bounded by DEADLINE) until it holds."""
        end = time.monotonic() + DEADLINE
        while not condition():
            assert self.process.poll() is None, f"the server exited while waiting for {what}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.05)


def start(checkpoint: Path, *args: object, gate: Path | None = None, **env: str) -> Server:
    """Start ``clipseg serve`` (``env`` added to its environment) and wait until /healthz answers 200."""
    port = free_port()
    env = subprocess_env(CLIPSEG_TOKEN=TOKEN, **({"CLIPSEG_TEST_GATE": str(gate)} if gate else {}), **env)
    gate_fd = None
    if gate is not None:
        os.mkfifo(gate)
        gate_fd = os.open(gate, os.O_RDWR)  # held open: the server's reads wait for our bytes, never for EOF
    command = [sys.executable, "-c", LAUNCHER, "serve", "--weights", str(checkpoint), "--precision", "fp32",
               "--port", str(port), *map(str, args)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    server = Server(process, f"http://127.0.0.1:{port}", gate_fd)

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    server.until(ready, "/healthz")
    return server


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()
    if server.gate is not None:
        os.close(server.gate)


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> Iterator[Server]:
    server = start(checkpoint, "--max-pixels", 100_000, "--max-upload-mb", 1, "--cors", ALLOWED, "--batch-size", 4,
                   "--batch-wait-ms", 20)
    yield server
    stop(server)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("serve-images")
    return [save(noise((60 + 3 * i, 40 + 2 * i), seed=i), folder / f"photo{i}.png") for i in range(8)]


# ---- the answers: the bytes clipseg segment writes ---------------------------------------------------------


def test_32_concurrent_masks_are_the_bytes_clipseg_segment_writes(server, images, checkpoint, tmp_path):
    asked = [(images[i % 8], ("car", "tree")[i // 8 % 2]) for i in range(32)]
    assert_masks_are_segment_files(server, asked, images, checkpoint, tmp_path)


def test_json_answer_has_every_file_and_the_statistics_of_segment_json(server, images, checkpoint, tmp_path):
    options = ["--negative", "tree", "--threshold", "0.3", "--dilate", "2", "--cutout", "--overlay"]
    records = segment_cli(images[1], tmp_path, checkpoint, "car", "sky", *options)
    answer = post(server, images[1], "car", "sky", negative="tree", threshold=0.3, dilate=2, cutout=True,
                  overlay=True, headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    masks = answer.json()["masks"]
    assert [mask["prompt"] for mask in masks] == [record["prompt"] for record in records]
    for mask, record in zip(masks, records, strict=True):
        assert (mask["coverage"], mask["bbox"]) == (record["coverage"], record["bbox"])
        assert mask["mean_probability"] == pytest.approx(record["mean_probability"], rel=1e-5)  # float32 sums
        for kind in ("mask", "overlay", "cutout"):
            assert base64.b64decode(mask[kind]) == Path(record[kind]).read_bytes(), kind


def test_union_and_soft_answer_one_png(server, images, checkpoint, tmp_path):
    records = segment_cli(images[2], tmp_path, checkpoint, "car", "tree", "--union", "--soft", "--no-overlay")
    answer = post(server, images[2], "car", "tree", union=True, soft=True)
    assert answer.status_code == 200, answer.text
    assert answer.content == Path(records[0]["mask"]).read_bytes()


# ---- errors: one JSON line each, and the server serves on ----------------------------------------------


@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"threshold": 2}, 422, "threshold"),
    ({"dilate": -1}, 422, "dilate"),
    ({"colour": "red"}, 422, "unknown field 'colour'"),
    ({"refine": "sam"}, 422, "refine 'sam' is not loaded here; this server refines nothing; start it with clipseg "
                             "serve --refine sam"),  # not "use none or none"
    ({"template": "no placeholder"}, 422, "{}"),
    ({"overlay": True}, 422, "Accept: image/png"),  # asked for a PNG, but that is two files
])
def test_bad_options_are_one_line_errors(server, images, fields, status, says):
    headers = {"Accept": "image/png"} if "overlay" in fields else None
    answer = post(server, images[0], "car", headers=headers, **fields)
    assert answer.status_code == status
    assert says in answer.json()["error"] and "\n" not in answer.json()["error"]
    assert post(server, images[0], "car").status_code == 200


def test_empty_prompt_not_an_image_and_too_many_pixels(server, images, tmp_path):
    assert post(server, images[0], " ").json()["error"] == "a prompt is empty; give some text"
    answer = post(server, b"GIF89a but not really", "car")
    assert (answer.status_code, answer.json()["error"]) == (422, "photo.png: not an image clipseg can read")
    big = BytesIO()
    Image.new("RGB", (400, 300)).save(big, "PNG")  # 120 000 pixels > --max-pixels 100 000, a small file
    answer = post(server, big.getvalue(), "car")
    assert answer.status_code == 413 and "120000 pixels" in answer.json()["error"]
    assert "/" not in answer.json()["error"].replace("--max-pixels", "")  # no server path in an answer
    missing = httpx.post(f"{server.url}/v1/segment", data={"prompt": "car"}, headers=AUTH)
    assert missing.status_code == 422 and missing.json()["error"] == "image: Field required"


def raw(server: Server, head: str, body: bytes) -> bytes:
    """Send a request's head and the start of its body on a socket; return the answer's first bytes."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while not answer.endswith(b"}") and (chunk := sock.recv(65536)):  # to the end of the JSON error
            answer += chunk
        return answer


@pytest.mark.parametrize("framing", ["Content-Length: 100000000", "Transfer-Encoding: chunked"])
def test_a_body_over_max_upload_mb_is_refused_before_it_is_read_whole(server, framing):
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n{framing}")
    start = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    part = b"x" * 300_000  # chunked: 1.2 MB sent of an endless image; else 1 kB of the 100 MB announced
    chunks = [start, *[part] * 4] if "chunked" in framing else [start + part[:1000]]
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) if "chunked" in framing else chunks[0]
    answer = raw(server, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"--max-upload-mb" in answer


# ---- token, CORS, metrics ------------------------------------------------------------------------------


def test_token_is_needed_on_every_route_but_healthz(server, images):
    for method, path in [("GET", "/metrics"), ("GET", "/"), ("GET", "/docs"), ("POST", "/v1/segment")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}):
            answer = httpx.request(method, server.url + path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert "token" in answer.json()["error"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ready"}
    assert httpx.get(f"{server.url}/", auth=("anyone", TOKEN)).status_code == 200  # a browser's Basic login


def test_cors_only_for_the_origin_given(server):
    allowed = httpx.get(f"{server.url}/healthz", headers={"Origin": ALLOWED})
    other = httpx.get(f"{server.url}/healthz", headers={"Origin": "http://elsewhere.example"})
    assert allowed.headers.get("access-control-allow-origin") == ALLOWED
    assert "access-control-allow-origin" not in other.headers


def test_metrics_count_requests_by_status(server, images):
    before = server.metric('clipseg_requests_total{status="422"}')
    post(server, images[0], " ")
    post(server, images[0], "car", threshold=-1)  # refused by the form's validation
    assert server.metric('clipseg_requests_total{status="422"}') == before + 2
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    for name in ("clipseg_request_seconds_bucket", "clipseg_queue_depth", "clipseg_batch_size_bucket",
                 "clipseg_model_seconds_sum"):
        assert name in text


# ---- the queue and the lifecycle (a gated server: the test decides when each model call runs) ------------


def test_waiting_requests_share_a_model_call_a_full_queue_says_503_and_a_leaving_client_frees_its_place(
        checkpoint, images, tmp_path):
    server = start(checkpoint, "--max-queue", 3, "--batch-size", 4, "--batch-wait-ms", 0, gate=tmp_path / "gate")
    depth = "clipseg_queue_depth"
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, server, images[0], "car")  # taken by the model thread, held at the gate
            server.until(lambda: server.metric(depth) == 1, "the first request held")
            waiting = [pool.submit(post, server, images[i], "tree") for i in (1, 2)]
            server.until(lambda: server.metric(depth) == 3, "two more requests queued")
            full = post(server, images[3], "car")
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert "queue is full" in full.json()["error"]
            server.release(2)
            assert [answer.result().status_code for answer in (first, *waiting)] == [200, 200, 200]
        assert server.metric("clipseg_batch_size_count") == 2  # the two that waited ran in one model call
        assert server.metric("clipseg_batch_size_sum") == 3

        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(post, server, images[4], "car")
            server.until(lambda: server.metric(depth) == 1, "a request held")
            request = httpx.Request("POST", f"{server.url}/v1/segment", headers=AUTH, data={"prompt": "car"},
                                    files={"image": ("a.png", images[5].read_bytes())})
            head = "".join(f"{key}: {value}\r\n" for key, value in request.headers.items())
            leaving = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            leaving.sendall(f"POST /v1/segment HTTP/1.1\r\n{head}\r\n".encode() + b"".join(request.stream))
            server.until(lambda: server.metric(depth) == 2, "the leaving client's request queued")
            leaving.close()
            server.until(lambda: server.metric(depth) == 1, "the leaving client's place freed")
            server.release(1)
            assert held.result().status_code == 200
    finally:
        stop(server)


def test_sigterm_answers_the_requests_in_flight_then_exits_0(checkpoint, images, tmp_path):
    server = start(checkpoint, "--batch-size", 1, "--batch-wait-ms", 0, gate=tmp_path / "gate")
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(post, server, images[i], "car") for i in range(3)]
            server.until(lambda: server.metric("clipseg_queue_depth") == 3, "three requests in flight")
            server.process.send_signal(signal.SIGTERM)  # the model held: nothing has been answered yet
            server.release(3)
            answers = [answer.result() for answer in answers]
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert all(answer.content.startswith(b"\x89PNG") for answer in answers)
        assert server.process.wait(timeout=DEADLINE) == 0
        assert "Traceback" not in server.process.stderr.read()
    finally:
        stop(server)


def test_sigint_on_an_idle_server_exits_0(checkpoint):
    server = start(checkpoint)
    try:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=DEADLINE) == 0
    finally:
        stop(server)


# ---- the in-memory path: nothing left behind (issue 30 item 6) ----------------------------------------------


def raw_request(image: bytes, prompt: str) -> bytes:
    """The bytes of a whole ``POST /v1/segment`` request, as httpx would send them."""
    request = httpx.Request("POST", "http://127.0.0.1/v1/segment", headers=AUTH, data={"prompt": prompt},
                            files={"image": ("a.png", image)})
    head = "".join(f"{key}: {value}\r\n" for key, value in request.headers.items())
    return f"POST /v1/segment HTTP/1.1\r\n{head}\r\n".encode() + b"".join(request.stream)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def test_clients_that_leave_leave_no_file_and_their_memory_goes(checkpoint, tmp_path):
    temp = tmp_path / "tmp"  # the server's TMPDIR: where its upload folders went
    temp.mkdir()
    # one malloc arena: the server's size then follows what it holds, not what glibc's per-thread arenas keep
    server = start(checkpoint, "--max-queue", 64, "--batch-size", 1, "--batch-wait-ms", 0, "--max-pixels", 4_000_000,
                   "--max-upload-mb", 40, gate=tmp_path / "gate", TMPDIR=str(temp), MALLOC_ARENA_MAX="1")
    big = BytesIO()
    noise((2000, 1500), seed=7).save(big, "PNG", compress_level=0)  # 9 MB that nothing compresses
    whole = raw_request(big.getvalue(), "car")
    port = int(server.url.rsplit(":", 1)[1])

    def leave() -> None:
        """Ten clients send their request and leave while it waits; five more leave halfway through the upload."""
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(15)]
        for sock in sockets[:10]:
            sock.sendall(whole)
        for sock in sockets[10:]:
            sock.sendall(whole[: len(whole) // 2])
        server.until(lambda: server.metric("clipseg_queue_depth") == 10, "ten requests held")
        for sock in sockets:
            sock.close()
        server.until(lambda: server.metric("clipseg_queue_depth") == 1, "the places of the nine waiting freed")
        server.release(1)  # the one the model holds runs, for nobody; the cancelled ones never reach the model
        server.until(lambda: server.metric("clipseg_running") == 0 and server.metric("clipseg_queue_depth") == 0,
                     "nothing running")

    try:
        for _ in range(2):
            leave()
        settled = rss_bytes(server.process.pid)
        for _ in range(4):  # 60 clients more, 50 uploads whole: 450 MB if they were held
            leave()
        assert list(temp.rglob("*")) == []
        opened = [os.readlink(fd) for fd in Path(f"/proc/{server.process.pid}/fd").iterdir()]
        assert not [name for name in opened if name.startswith(str(temp))]
        grown = rss_bytes(server.process.pid) - settled
        assert grown < 20 * len(whole), f"{grown / 1e6:.0f} MB more after 60 clients left"
        server.release(1)
        assert post(server, big.getvalue(), "car").status_code == 200  # and it serves on
    finally:
        stop(server)


# ---- SIGTERM: what reached the server is answered (item 7) -----------------------------------------------------


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection."""
    sock.settimeout(DEADLINE)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def refused(server: Server) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_answers_what_reached_the_server_healthz_says_503_and_then_no_more_is_accepted(checkpoint, images,
                                                                                                tmp_path):
    server = start(checkpoint, "--batch-size", 1, "--batch-wait-ms", 0, "--header-timeout", 600, gate=tmp_path / "gate")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, server, images[0], "car")  # in the model, held at the gate
            server.until(lambda: server.metric("clipseg_queue_depth") == 1, "a request held")
            late = socket.create_connection(("127.0.0.1", port))  # its first bytes arrive before SIGTERM
            whole = raw_request(images[1].read_bytes(), "car")
            late.sendall(whole[:30])
            probe = socket.create_connection(("127.0.0.1", port))
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            server.process.send_signal(signal.SIGTERM)
            server.until(lambda: refused(server), "the server to stop accepting")
            probe.sendall(b"\r\n")
            health = answer_of(probe)
            assert health.startswith(b"HTTP/1.1 503") and b'"draining"' in health, health
            late.sendall(whole[30:])
            server.release(2)
            assert held.result().status_code == 200
            answer = answer_of(late)
            assert answer.startswith(b"HTTP/1.1 200") and b"\x89PNG" in answer, answer[:300]
        assert server.process.wait(timeout=DEADLINE) == 0
        assert "Traceback" not in server.process.stderr.read()
    finally:
        stop(server)


# ---- slow clients and open connections (item 4) ---------------------------------------------------------------


def test_a_slow_head_or_body_gets_408_and_the_server_serves_on(checkpoint, images):
    server = start(checkpoint, "--header-timeout", 1, "--body-timeout", 1)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        idle = socket.create_connection(("127.0.0.1", port))  # sends nothing
        slow_head = socket.create_connection(("127.0.0.1", port))
        slow_head.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(raw_request(images[0].read_bytes(), "car")[:-100])
        second = socket.create_connection(("127.0.0.1", port))  # kept alive: its second head is slow
        second.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += second.recv(65536)
        second.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        for sock, option in ((idle, b"--header-timeout"), (slow_head, b"--header-timeout"),
                             (slow_body, b"--body-timeout")):
            answer = answer_of(sock)
            assert answer.startswith(b"HTTP/1.1 408") and option in answer, answer[:300]
        answer = answer_of(second)
        assert first.startswith(b"HTTP/1.1 200") and answer.startswith(b"HTTP/1.1 408"), (first[:50], answer[:300])
        assert post(server, images[0], "car").status_code == 200
    finally:
        stop(server)


def test_connections_past_max_connections_are_answered_503(checkpoint, images):
    server = start(checkpoint, "--max-connections", 3, "--header-timeout", 600)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        server.until(lambda: post(server, images[0], "car").status_code == 503, "the connections counted")
        for sock in idle:
            sock.close()
        server.until(lambda: post(server, images[0], "car").status_code == 200, "the connections closed counted")
    finally:
        stop(server)
