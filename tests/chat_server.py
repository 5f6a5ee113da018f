"""Real HTTP servers on 127.0.0.1 that speak the chat-completions protocol, for judge tests.

A :class:`ChatServer` listens on an ephemeral port in a background thread and answers every
``POST`` with ``respond(request)``, which returns ``(status, body, headers)`` or ``None`` to
stay silent (the request then hangs until the server stops, bounded by ``SILENT_MAX_S``).
Every request (path, headers, parsed JSON body) is recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SILENT_MAX_S = 10.0


def completion(content: str | None, model: str = "test-judge") -> dict:
    """A chat-completions response body holding one assistant message."""
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def user_text(request: dict) -> str:
    """The user message of a recorded request."""
    return next(m["content"] for m in request["body"]["messages"] if m["role"] == "user")


class ChatServer:
    """A chat-completions server on 127.0.0.1 with a scripted ``respond`` function."""

    def __init__(self, respond: Callable[[dict], tuple[int, object, dict] | None]):
        self.respond = respond
        self.requests: list[dict] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # the name http.server calls
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                server.requests.append(request)
                answer = server.respond(request)
                if answer is None:
                    server.release.wait(SILENT_MAX_S)
                    return
                status, payload, headers = answer
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        """Base URL, as a user would pass it (``/chat/completions`` is added by the client)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
