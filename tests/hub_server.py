"""A small stand-in for the Hugging Face Hub, served over HTTP on 127.0.0.1 for download tests.

It answers the requests huggingface_hub (2.4) makes in ``snapshot_download`` / ``hf_hub_download``:

- ``GET  /api/models/{repo}/revision/{rev}``: repo info, ``{"id", "sha", "siblings"}``.
- ``GET  /api/models/{repo}/tree/{rev}``: the file listing, with git blob ids and the sha256 of LFS files.
- ``HEAD /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` and, for LFS files,
  ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``.
- ``GET  /{repo}/resolve/{rev}/{path}``: the bytes; a ``Range`` request is answered ``206``.

No Xet headers or fields are ever sent, so clients download over plain HTTP. Unknown repos, revisions
and files get the Hub's ``X-Error-Code`` answers. Faults for tests (each consumed by one GET of a file):
``cut_transfer`` (close the connection after N bytes), ``fail_transfer`` (an HTTP error status) and
``corrupt`` (same length, wrong bytes). Every request is logged in ``requests``.

Usage (the ``hub_server`` fixture in conftest.py starts and stops one per test)::

    sha = hub_server.add_revision("owner/repo", "main", tmp_path / "repo")  # a folder or {path: bytes}
    snapshot_download("owner/repo", endpoint=hub_server.url, cache_dir=tmp_path / "cache")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/.*)?)?")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class HubRequest:
    """One request the server received: method, decoded path (no query) and Range header."""

    method: str
    path: str
    range: str | None


@dataclass(frozen=True)
class _Revision:
    sha: str
    files: dict[str, bytes]


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (what the Hub reports as a file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


class FakeHub:
    """Serve repos of files the way the Hub does; see the module docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, _Revision]] = {}
        self.requests: list[HubRequest] = []
        self._faults: dict[str, deque[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None

    # ---- content -------------------------------------------------------------------------------
    def add_revision(self, repo_id: str, revision: str, files: Path | Mapping[str, bytes]) -> str:
        """Serve ``files`` (a folder, or repo paths to bytes) as ``revision`` of ``repo_id``.

        Returns:
            The revision's fixed fake commit sha (40 hex digits), which also works as a revision.
        """
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in files.rglob("*") if p.is_file()}
        sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        self.repos.setdefault(repo_id, {})[revision] = _Revision(sha, dict(files))
        return sha

    def find_revision(self, repo_id: str, revision: str) -> _Revision | None:
        """A revision by branch/tag name or by commit sha."""
        revisions = self.repos.get(repo_id, {})
        return revisions.get(revision) or next((r for r in revisions.values() if r.sha == revision), None)

    # ---- faults --------------------------------------------------------------------------------
    def cut_transfer(self, path: str, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` send ``after_bytes`` of the body, then drop the connection."""
        self._add_fault(path, "cut", after_bytes, times)

    def fail_transfer(self, path: str, status: int = 503, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` are answered with HTTP ``status``."""
        self._add_fault(path, "status", status, times)

    def corrupt(self, path: str, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` send bytes of the right length but the wrong content."""
        self._add_fault(path, "corrupt", 0, times)

    def _add_fault(self, path: str, kind: str, value: int, times: int) -> None:
        with self._lock:
            self._faults.setdefault(path, deque()).extend([(kind, value)] * times)

    def _next_fault(self, path: str) -> tuple[str, int] | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.popleft() if queue else None

    # ---- log -----------------------------------------------------------------------------------
    def requested_files(self, method: str = "GET") -> list[str]:
        """Repo paths requested through ``/resolve/`` with ``method``, in order."""
        matches = (_RESOLVE.fullmatch(r.path) for r in self.requests if r.method == method)
        return [m["file"] for m in matches if m]

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections; safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        raw_path = urlsplit(self.path).path
        with self.hub._lock:
            self.hub.requests.append(HubRequest(self.command, unquote(raw_path), self.headers.get("Range")))
        if api := _API.fullmatch(raw_path):
            self._api(unquote(api["repo"]), api["kind"], unquote(api["rev"] or "main"))
        elif resolve := _RESOLVE.fullmatch(raw_path):
            self._resolve(unquote(resolve["repo"]), unquote(resolve["rev"]), unquote(resolve["file"]))
        else:
            self._error(404, None, "no such endpoint")

    def _api(self, repo_id: str, kind: str | None, rev: str) -> None:
        revision = self._revision_or_error(repo_id, rev)
        if revision is None:
            return
        if kind == "tree":
            self._json([_tree_entry(path, data) for path, data in sorted(revision.files.items())])
        else:
            siblings = [{"rfilename": path} for path in sorted(revision.files)]
            self._json({"id": repo_id, "modelId": repo_id, "sha": revision.sha, "private": False, "siblings": siblings})

    def _resolve(self, repo_id: str, rev: str, file: str) -> None:
        revision = self._revision_or_error(repo_id, rev)
        if revision is None:
            return
        if file not in revision.files:
            self._error(404, "EntryNotFound", f"{file} does not exist", revision.sha)
            return
        data = revision.files[file]
        headers = {"X-Repo-Commit": revision.sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if file.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers |= {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        fault = self.hub._next_fault(file) if self.command == "GET" else None
        if fault and fault[0] == "status":
            self._error(fault[1], None, "injected failure", revision.sha)
            return
        if fault and fault[0] == "corrupt":
            data = bytes(byte ^ 0x5A for byte in data)
        status, body = self._apply_range(data, headers)
        if status == 416:
            self._error(416, None, "range not satisfiable", revision.sha)
            return
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault and fault[0] == "cut":
            self.wfile.write(body[: fault[1]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def _apply_range(self, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) for the request's Range header; adds Content-Range for a 206."""
        match = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if match is None or self.command != "GET":
            return 200, data
        start, end = match.groups()
        if not start:  # suffix range: the last N bytes
            first, last = max(len(data) - int(end or 0), 0), len(data) - 1
        else:
            first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
        if first > last:
            return 416, b""
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return 206, data[first : last + 1]

    def _revision_or_error(self, repo_id: str, rev: str) -> _Revision | None:
        if repo_id not in self.hub.repos:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        revision = self.hub.find_revision(repo_id, rev)
        if revision is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return revision

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _tree_entry(path: str, data: bytes) -> dict[str, object]:
    """A ``/tree`` entry as the Hub lists it: LFS files carry the sha256 of their content."""
    if not path.endswith(LFS_SUFFIXES):
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    pointer = _lfs_pointer(data)
    lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(pointer), "lfs": lfs}
