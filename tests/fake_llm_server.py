"""A real loopback HTTP server speaking the OpenAI chat-completions protocol, with scripted behaviour.

Used by the LLM client tests, the operator/search tests and bench/: it lets the real `openai` SDK talk over
real sockets to a server whose answers and faults (rate limits, 5xx, slow answers, dropped connections,
rejected response formats) are scripted step by step, or derived from the request by a `responder` callable.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeLLMServer",
    "RecordedRequest",
    "Step",
    "closed_port_url",
    "drop",
    "http_error",
    "rate_limited",
    "reject_response_format",
    "reply",
    "slow",
]

Responder = Callable[[dict[str, Any]], "str | Step"]

RESPONSE_FORMAT_REJECTION = (
    "response_format of type 'json_schema' is not supported by this server (schema-guided decoding disabled)"
)


@dataclass(frozen=True)
class Step:
    """One scripted server behaviour for one chat-completions request."""

    text: str | None = None  # answer content (when status is None)
    status: int | None = None  # HTTP error status to answer with instead of a completion
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (e.g. Retry-After)
    error_message: str = "scripted error"  # error.message in the JSON error body
    delay_s: float = 0.0  # wait this long before answering (interruptible by stop())
    drop: bool = False  # close the socket without any response
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # usage override; estimated from text when None
    completion_tokens: int | None = None


def reply(text: str, *, delay_s: float = 0.0, finish_reason: str = "stop") -> Step:
    """A normal completion answering `text`."""
    return Step(text=text, delay_s=delay_s, finish_reason=finish_reason)


def slow(text: str, delay_s: float) -> Step:
    """A completion that arrives only after `delay_s` seconds (to trigger client timeouts)."""
    return Step(text=text, delay_s=delay_s)


def http_error(status: int, message: str = "scripted error", headers: dict[str, str] | None = None) -> Step:
    """An HTTP error status with an OpenAI-style JSON error body."""
    return Step(status=status, error_message=message, headers=dict(headers or {}))


def rate_limited(retry_after: str | float | None = None, *, retry_after_ms: float | None = None) -> Step:
    """HTTP 429 with optional Retry-After (seconds or HTTP-date) and retry-after-ms headers."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return Step(status=429, error_message="Rate limit reached, slow down", headers=headers)


def drop() -> Step:
    """Close the connection without sending any response."""
    return Step(drop=True)


def reject_response_format() -> Step:
    """HTTP 400 rejecting the request's response_format (as servers without schema support do)."""
    return Step(status=400, error_message=RESPONSE_FORMAT_REJECTION)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any] | None  # parsed JSON body (POST), None for GET
    time: float  # time.monotonic() at arrival


def estimate_tokens(text: str) -> int:
    """Crude token estimate used for the usage block: one token per four characters, at least one."""
    return len(text) // 4 + 1


def _prompt_text(body: dict[str, Any]) -> str:
    """Concatenated text of all message contents (string or content-part lists)."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def closed_port_url() -> str:
    """A loopback base URL on a port nobody listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FakeLLMServer:
    """OpenAI-compatible chat-completions server on 127.0.0.1 with scripted steps and/or a responder."""

    def __init__(
        self,
        *,
        models: Iterable[str] = ("fake-model",),
        steps: Iterable[Step | str] = (),
        responder: Responder | None = None,
        reject_json_schema: bool = False,
        check_model: bool = True,
        models_status: int | None = None,
    ) -> None:
        """Configure served models, the initial script, the fallback responder and optional strictness."""
        self.models = list(models)
        self.responder = responder
        self.reject_json_schema = reject_json_schema
        self.check_model = check_model
        self.models_status = models_status  # answer GET /models with this error status instead
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Step] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._completions = 0
        self.script(*steps)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.02), name="fake-llm-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, interrupt delayed answers and close every open connection (also keep-alive ones)."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            _close_quietly(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (server must be started)."""
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting and inspection ----------------------------------------------------------------------------
    def script(self, *steps: Step | str) -> None:
        """Append steps to the queue; a plain string is a normal reply."""
        with self._lock:
            self._queue.extend(reply(s) if isinstance(s, str) else s for s in steps)

    @property
    def pending(self) -> int:
        """Number of scripted steps not yet consumed."""
        with self._lock:
            return len(self._queue)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The POST /chat/completions requests received so far (including failed ones)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    @property
    def completions_served(self) -> int:
        """Number of successful completions answered so far."""
        with self._lock:
            return self._completions

    # --- request handling (called from handler threads) ------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_step(self, body: dict[str, Any]) -> Step:
        """The scripted step for this request: the queue first, then the responder, then a counter reply."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            count = self._completions
        if self.responder is not None:
            out = self.responder(body)
            return reply(out) if isinstance(out, str) else out
        return reply(json.dumps({"n": count}))

    def _completion_body(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        """An OpenAI chat.completion JSON object for a successful step."""
        with self._lock:
            self._completions += 1
            serial = self._completions
        text = step.text or ""
        prompt_tokens = step.prompt_tokens if step.prompt_tokens is not None else estimate_tokens(_prompt_text(body))
        completion_tokens = step.completion_tokens if step.completion_tokens is not None else estimate_tokens(text)
        return {
            "id": f"chatcmpl-fake-{serial}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": step.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _precheck(self, body: dict[str, Any]) -> Step | None:
        """Built-in rejections: unknown model, unsupported json_schema response_format."""
        model = body.get("model")
        if self.check_model and self.models and model not in self.models:
            return http_error(404, f"The model '{model}' does not exist")
        fmt = body.get("response_format")
        if self.reject_json_schema and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return reject_response_format()
        return None


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeLLMServer and tracks live connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeLLMServer):
        self.fake = fake
        super().__init__(address, handler)


def _close_quietly(conn: socket.socket) -> None:
    """Shut a socket down both ways and close it, ignoring errors from already-closed sockets."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    """Routes GET /v1/models and POST /v1/chat/completions to the owning FakeLLMServer."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by the base class
        """Silence per-request logging."""

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server.fake
        fake._record(RecordedRequest("GET", self.path, self._headers(), None, time.monotonic()))
        if self.path.rstrip("/") != "/v1/models":
            self._send_json(404, _error_body(f"no route GET {self.path}", "not_found"))
            return
        if fake.models_status is not None:
            self._send_json(fake.models_status, _error_body("scripted /models failure", "server_error"))
            return
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models]
        self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        fake._record(RecordedRequest("POST", self.path, self._headers(), body, time.monotonic()))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, _error_body(f"no route POST {self.path}", "not_found"))
            return
        if not isinstance(body, dict):
            self._send_json(400, _error_body("request body is not a JSON object", "invalid_request_error"))
            return
        rejection = fake._precheck(body)  # built-in rejections do not consume scripted steps
        if rejection is not None:
            self._send_json(rejection.status or 400, _error_body(rejection.error_message, "invalid_request_error"))
            return
        step = fake._next_step(body)
        if step.delay_s > 0 and fake._stopping.wait(step.delay_s):
            self.close_connection = True
            return
        if step.drop:
            self.close_connection = True
            _close_quietly(self.connection)
        elif step.status is not None:
            self._send_json(step.status, _error_body(step.error_message, _error_kind(step.status)), step.headers)
        else:
            self._send_json(200, fake._completion_body(body, step), step.headers)

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. timed out) before the answer


def _error_kind(status: int) -> str:
    """OpenAI error type for an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _error_body(message: str, kind: str) -> dict[str, Any]:
    """OpenAI-style error JSON."""
    param = "response_format" if message == RESPONSE_FORMAT_REJECTION else None
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
