"""A local stand-in for the Hugging Face hub's HTTP API, served on loopback.

The hub cannot be reached from the test machine, so the tests point `HF_ENDPOINT` at this
server and let the real huggingface_hub client talk to it. It implements what downloads use:
repo info (`/api/{type}s/{repo}[/revision/{rev}]`), the file tree (`/api/{type}s/{repo}/tree/...`)
and file resolution (`HEAD`/`GET /{datasets/}{repo}/resolve/{rev}/{path}`, with byte ranges),
plus the hub's gating and token errors. `fail_after_bytes` cuts a download short once, to test
resumption.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)

    @property
    def commit(self) -> str:
        """Like a git commit: changes whenever any file changes (re-`add` a repo to move it)."""
        digest = hashlib.sha1()
        for name, data in sorted(self.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha1(data).digest())
        return digest.hexdigest()


@dataclass
class FakeHub:
    repos: dict[tuple[str, str], FakeRepo] = field(default_factory=dict)
    valid_tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_after_bytes: dict[str, int] = field(default_factory=dict)  # path -> bytes, once
    url: str = ""

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes], **kw) -> FakeRepo:
        repo = FakeRepo(files=dict(files), **kw)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def add_folder(self, repo_type: str, repo_id: str, folder: Path, **kw) -> FakeRepo:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return self.add(repo_type, repo_id, files, **kw)

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]


API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+|[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?$")
RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+|[^/]+)/resolve/([^/]+)/(.+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data, status: int = 200) -> None:
            body = json.dumps(data).encode()
            self._send(status, body, {"Content-Type": "application/json"})

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message, "Content-Type": "application/json"}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[7:] if auth.startswith("Bearer ") else None

        def _authorised(self, repo: FakeRepo, downloading: bool) -> bool:
            token = self._token()
            if token is not None and token not in hub.valid_tokens:
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
            if repo.gated and downloading:
                if token is None:
                    self._error(401, "GatedRepo", "Access to this repo is restricted. Log in.")
                    return False
                if token not in repo.allowed_tokens:
                    self._error(403, "GatedRepo", "You have not accepted the terms of this repo.")
                    return False
            return True

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            if m := API.match(path):
                kind, repo_id, what = m.group(1)[:-1], m.group(2), m.group(3)
                repo = hub.repos.get((kind, repo_id))
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if not self._authorised(repo, downloading=False):
                    return None
                if what in (None, "revision"):
                    return self._json(
                        {
                            "id": repo_id,
                            "sha": repo.commit,
                            "private": False,
                            "gated": "manual" if repo.gated else False,
                            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                        }
                    )
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in sorted(repo.files.items())
                    ]
                )
            if m := RESOLVE.match(path):
                kind = "dataset" if m.group(1) else "model"
                repo = hub.repos.get((kind, m.group(2)))
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if not self._authorised(repo, downloading=True):
                    return None
                name = m.group(4)
                if name not in repo.files:
                    return self._error(404, "EntryNotFound", "Entry not found")
                return self._serve_file(name, repo.files[name], repo.commit)
            return self._error(404, None, "not found")

        def _serve_file(self, name: str, data: bytes, commit: str) -> None:
            etag = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            start = 0
            if rng := re.match(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(rng.group(1))
            body = data[start:]
            status = 206 if start else 200
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = len(body)
            cut = hub.fail_after_bytes.pop(name, None) if self.command == "GET" else None
            if cut is None:
                return self._send(status, body, headers)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    return Handler


class FakeHubServer:
    """Context manager: starts the server on 127.0.0.1 with a free port."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self._server.daemon_threads = True
        self.hub.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
