"""A stand-in for the Hugging Face hub on 127.0.0.1, serving a model root (`<root>/<org>/<name>/...`) in the shapes
huggingface_hub 2.4 asks for: repo info with file sizes (`/api/models/{repo}/revision/{rev}`), the tree listing
(`/api/models/{repo}/tree/{rev}`) and files (`HEAD`/`GET /{repo}/resolve/{rev}/{path}`, with the commit and ETag
headers and Range requests). It can drop the connection part way through a file once, or send slowly, and it logs
every request, so tests see whether a download went on from where it stopped."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "c0ffee" + "0" * 34


@dataclass
class HubStandIn:
    root: Path
    url: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    drop_once: set[str] = field(default_factory=set)  # file paths whose first GET stops half way
    # File paths whose first GET sends half, sets `held` and waits for the test to set `release` (then sends the
    # rest, or with drop_once too, closes the connection there): a download caught part way, as long as a test needs.
    hold_once: set[str] = field(default_factory=set)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0  # seconds per 64 KiB sent: slow enough to stop a download part way

    def files(self, repo: str) -> dict[str, Path]:
        folder = self.root / repo
        return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}

    def file_gets(self, name: str) -> list[str]:
        """The Range headers of the GETs of files ending in `name` ('' where none was sent)."""
        return [r for method, path, r in self.requests if method == "GET" and path.endswith(name) and "/resolve/" in path]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(path: str, file: Path) -> dict:
    size = file.stat().st_size
    return {"path": path, "size": size, "oid": hashlib.sha1(file.read_bytes()).hexdigest(),
            "lfs": {"oid": _sha256(file), "size": size, "pointerSize": 134}}  # fmt: skip


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range", "")))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path):
                files = hub.files(m[1])
                if not files:
                    return self.send_error(404)
                siblings = [{"rfilename": p, "size": e["size"], "blobId": e["oid"],
                             "lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}}
                            for p, e in ((p, _entry(p, f)) for p, f in files.items())]  # fmt: skip
                return self._json({"id": m[1], "sha": COMMIT, "siblings": siblings})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                prefix = (m[3] or "").strip("/")
                return self._json([{"type": "file", **_entry(p, f)} for p, f in hub.files(m[1]).items()
                                   if p.startswith(prefix)])  # fmt: skip
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                file = hub.files(m[1]).get(m[3])
                if file is None:
                    return self.send_error(404)
                return self._send_file(m[3], file, head)
            self.send_error(404)

        def _send_file(self, name: str, file: Path, head: bool) -> None:
            data = file.read_bytes()
            start = 0
            if (wanted := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))) is not None:
                start = int(wanted[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{_sha256(file)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            body = data[start:]
            half = len(body) // 2
            hold = name in hub.hold_once
            hub.hold_once.discard(name)
            if name in hub.drop_once:
                hub.drop_once.discard(name)
                body = body[:half]  # then the connection closes short of Content-Length
            self.close_connection = True
            try:
                self._write(body[:half] if hold else body)
                if hold:
                    hub.held.set()
                    hub.release.wait(timeout=300)
                    self._write(body[half:])
            except (BrokenPipeError, ConnectionResetError):  # the client went away (a stopped download)
                pass

        def _write(self, body: bytes) -> None:
            for offset in range(0, len(body), 65536):
                self.wfile.write(body[offset : offset + 65536])
                self.wfile.flush()
                time.sleep(hub.delay)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    return Handler


@contextmanager
def hub_standin(root: Path, **options: object) -> Iterator[HubStandIn]:
    """The stand-in hub serving `root` on a free port, for as long as the block runs."""
    hub = HubStandIn(root, **options)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
