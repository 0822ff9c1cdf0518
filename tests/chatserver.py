"""A loopback OpenAI-compatible chat-completions server for the HTTP LLM backend's tests.

`reply(messages) -> str` decides each answer; every request body is kept in `requests`.
`fail(n) -> status | None` makes request n (counted from 1) fail with that HTTP status, with a
`retry-after-ms: 1` header so that the client's backoff stays short. `delay` holds each
answer that many seconds; `max_in_flight` records the most requests served at once. `models`
are listed at GET /v1/models (none: 404, as some servers answer). `page` (content type, body)
answers every GET instead (an HTML page where the API was expected); `body_of(n)` replaces
answer n's body with raw bytes (a truncated JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(
        self,
        reply: Callable[[list[dict]], str],
        fail: Callable[[int], int | None] = lambda n: None,
        delay: float = 0.0,
        models: tuple[str, ...] = (),
        page: tuple[str, bytes] | None = None,
        body_of: Callable[[int], bytes | None] = lambda n: None,
    ) -> None:
        self.reply = reply
        self.page = page
        self.body_of = body_of
        self.models = models
        self.fail = fail
        self.delay = delay
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.received = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if server.page is not None:
                    return self._send_raw(200, *server.page)
                if self.path != "/v1/models" or not server.models:
                    return self._send(404, {"error": "not found"})
                listed = [{"id": m, "object": "model", "owned_by": "test"} for m in server.models]
                return self._send(200, {"object": "list", "data": listed})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                with server._lock:
                    server.received += 1
                    number = server.received
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    status = server.fail(number)
                    if status is not None:
                        return self._send(status, {"error": {"message": f"status {status}"}})
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    content = server.reply(body["messages"])
                    raw = server.body_of(number)
                    if raw is not None:
                        return self._send_raw(200, "application/json", raw)
                    return self._send(200, completion(number, body["model"], content))
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, data: dict) -> None:
                self._send_raw(status, "application/json", json.dumps(data).encode())

            def _send_raw(self, status: int, kind: str, raw: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("retry-after-ms", "1")
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def completion(number: int, model: str, content: str) -> dict:
    return {
        "id": f"chat-{number}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
