"""A stand-in for the ModelScope hub's HTTP API on 127.0.0.1, serving one folder as one repository (test helper).

It answers the two requests the SDK makes for a snapshot and 404 for anything else:
  GET /api/v1/models/OWNER/NAME/repo/files?Revision=R&Recursive=True  → the listing (path, size, sha256)
  GET /api/v1/models/OWNER/NAME/repo?Revision=R&FilePath=P             → the bytes, honouring ``Range`` (206/416)
Files are read from the folder at each request, so a test changes "upstream" by editing the folder.
Switches on the instance make the hub misbehave: refuse, omit, corrupt, cut or stall a file.
Used by tests/test_download.py to run the real modelscope SDK (``MODELSCOPE_ENDPOINT``) against it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.servers import send_json

LISTING = "(listing)"  # the key of ``refuse`` that refuses the file listing itself


class HubEmulator:
    """Serve ``folder`` as model repository ``repo`` at ``self.url`` while used as a context manager."""

    def __init__(self, folder: Path, repo: str):
        self.folder, self.repo = folder, repo
        self.revisions = {"master"}  # any other revision answers 404
        self.refuse: dict[str, int] = {}  # file path (or LISTING) → HTTP status to answer instead
        self.unlisted: set[str] = set()  # left out of the listing, 404 when asked for
        self.missing: set[str] = set()  # listed, but 404 when asked for
        self.corrupt: set[str] = set()  # listed with the true sha256, served with flipped bytes
        self.cuts: dict[str, list[int]] = {}  # path → [bytes sent before the connection drops, times left]
        self.stalls: dict[str, list[int]] = {}  # path → [bytes sent before the response stalls, times left]
        self.release = threading.Event()  # ends every stall
        self.stalled = threading.Event()  # set once a stalled response has sent its bytes
        self.requests: list[tuple[str, str | None]] = []  # (file path or LISTING, Range header)
        self.server: ThreadingHTTPServer | None = None

    # --- switches --------------------------------------------------------------------------------

    def cut(self, path: str, after: int, times: int = 1) -> None:
        """Drop the connection after ``after`` bytes of ``path``, for the next ``times`` requests of it."""
        self.cuts[path] = [after, times]

    def stall(self, path: str, after: int, times: int = 1) -> None:
        """Send ``after`` bytes of ``path`` then stall until ``release`` is set, for the next ``times`` requests."""
        self.stalls[path] = [after, times]

    def fetches_of(self, path: str) -> list[str | None]:
        """The Range header of every content request for ``path`` (None for a whole-file request)."""
        return [ranged for asked, ranged in self.requests if asked == path]

    # --- what is served --------------------------------------------------------------------------

    def listing(self) -> list[dict]:
        files = []
        for path in sorted(self.folder.rglob("*")):
            name = path.relative_to(self.folder).as_posix()
            if path.is_file() and name not in self.unlisted:
                data = path.read_bytes()
                files.append({"Path": name, "Name": path.name, "Type": "blob", "Size": len(data),
                              "Sha256": hashlib.sha256(data).hexdigest()})
        return files

    def content(self, path: str) -> bytes | None:
        target = self.folder / path
        if path in self.unlisted or path in self.missing or not target.is_file():
            return None
        data = target.read_bytes()
        if path in self.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
        return data

    # --- server ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                emulator.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        url = urlparse(request.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        prefix = f"/api/v1/models/{self.repo}/repo"
        if url.path not in (prefix, prefix + "/files") or query.get("Revision", "master") not in self.revisions:
            return send_json(request, 404, {"Code": 10010205001, "Message": f"no such model or revision: {url.path}"})
        if url.path.endswith("/files"):
            self.requests.append((LISTING, None))
            if LISTING in self.refuse:
                return self.refuse_with(request, self.refuse[LISTING])
            return send_json(request, 200, {"Code": 200, "Success": True, "Data": {"Files": self.listing()}})
        path = query.get("FilePath", "")
        self.requests.append((path, request.headers.get("Range")))
        if path in self.refuse:
            return self.refuse_with(request, self.refuse[path])
        data = self.content(path)
        if data is None:
            return send_json(request, 404, {"Code": 10010205001, "Message": f"file {path} not found"})
        self.send_bytes(request, path, data)

    def refuse_with(self, request: BaseHTTPRequestHandler, status: int) -> None:
        reasons = {401: "login required", 403: "access denied", 404: "not found"}
        send_json(request, status, {"Code": status, "Message": reasons.get(status, "refused")})

    def send_bytes(self, request: BaseHTTPRequestHandler, path: str, data: bytes) -> None:
        start, size = 0, len(data)
        ranged = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            if start >= size:
                request.send_response(416)
                request.send_header("Content-Range", f"bytes */{size}")
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
        request.send_response(206 if ranged else 200)
        if ranged:
            request.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        request.send_header("Content-Length", str(size - start))
        request.send_header("Content-Type", "application/octet-stream")
        request.end_headers()
        body = data[start:]
        cut = self.cuts.get(path)
        if cut and cut[1] > 0:
            cut[1] -= 1
            request.wfile.write(body[: max(cut[0] - start, 0)])
            request.wfile.flush()
            request.close_connection = True
            return
        stall = self.stalls.get(path)
        if stall and stall[1] > 0:
            stall[1] -= 1
            request.wfile.write(body[: max(stall[0] - start, 0)])
            request.wfile.flush()
            self.stalled.set()
            self.release.wait(60)
            request.close_connection = True
            return
        request.wfile.write(body)
