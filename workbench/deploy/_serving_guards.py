"""Requests guarded as a server on one's own machine needs them (:func:`guard_app`).

One whose ``Host`` is not loopback's (or the host it listens on, or one :data:`HOSTS_ENV`
names) is a 400, so a web page cannot reach the model through DNS rebinding; a body over
:data:`MAX_BODY_BYTES` is a 413 before it is read; and every JSON error is in OpenAI's shape
(:func:`openai_error`), whose client reads the reason from ``error.message`` only.

Examples:
    >>> trusted_hosts()
    ['localhost', '127.0.0.1', '[::1]']
"""

from __future__ import annotations

import json
import os
from typing import Any

from workbench.deploy._serving_wrap import wrap_once

__all__ = [
    "HOSTS_ENV",
    "MAX_BODY_BYTES",
    "guard_app",
    "guard_requests",
    "openai_error",
    "trusted_hosts",
]

# A request body over this is answered 413 before it is read: an 18 MB prompt was read whole
# and tokenized for 20 s only to be refused as longer than the context.
MAX_BODY_BYTES = 8 * 1024 * 1024
HOSTS_ENV = "WORKBENCH_SERVE_HOSTS"
"""Host names (comma-separated) a server answers besides :func:`trusted_hosts`, read at start."""

# The host the server listens on, read as its app is built; set by the process's main
_listening: dict[str, str | None] = {"host": None}


def trusted_hosts(host: str = "localhost") -> list[str]:
    """The ``Host`` headers a server listening on ``host`` answers (port aside): loopback's
    names, and ``host``. Any other is a web page's request through DNS rebinding (a name
    of the attacker's that turned to 127.0.0.1), to be refused.

    Examples:
        >>> trusted_hosts("127.0.0.1")
        ['localhost', '127.0.0.1', '[::1]']
        >>> trusted_hosts("fe80::1")[-1], trusted_hosts("gpu-box.lan")[-1]
        ('[fe80::1]', 'gpu-box.lan')
    """
    named = f"[{host}]" if ":" in host and not host.startswith("[") else host
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    return loopback + ([named.lower()] if named.lower() not in loopback else [])


class _BodyLimit:
    """ASGI middleware answering a request whose body is over ``limit`` bytes with a 413,
    before reading it: at once when its ``Content-Length`` says so, else (chunked) as soon as
    what came passes the limit."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        declared = Headers(scope=scope).get("content-length")
        if declared is not None:  # uvicorn reads no more than it declares
            too_big = declared.strip().isdigit() and int(declared) > self.limit
            return await (self._refuse if too_big else self.app)(scope, receive, send)
        received, size = [], 0
        while not received or received[-1].get("more_body"):
            received.append(await receive())
            size += len(received[-1].get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
        replay = iter(received)

        async def replayed() -> dict:
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        detail = (
            f"the request body is over {self.limit} bytes ({self.limit / 2**20:g} MiB): the "
            "server reads no more; send a shorter prompt"
        )
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _extra_hosts(environ: Any = None) -> list[str]:
    """The host names :data:`HOSTS_ENV` adds (``environ``: ``os.environ`` when not given).

    Examples:
        >>> _extra_hosts({"WORKBENCH_SERVE_HOSTS": " Proxy.example, ,lab.lan"})
        ['proxy.example', 'lab.lan']
    """
    value = (os.environ if environ is None else environ).get(HOSTS_ENV, "")
    return [name.strip().lower() for name in value.split(",") if name.strip()]


class _HostCheck:
    """ASGI middleware: starlette's ``Host`` check, whose bare "Invalid host header" 400
    left a user behind a proxy with no hint, answering instead with a 400 that names the
    host refused, the hosts allowed and :data:`HOSTS_ENV`."""

    def __init__(self, app: Any, allowed_hosts: list[str]) -> None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        self.app, self.allowed = app, allowed_hosts
        self.check = TrustedHostMiddleware(self._passed, allowed_hosts=allowed_hosts)

    @staticmethod
    async def _passed(scope: dict, receive: Any, send: Any) -> None:
        scope["workbench.trusted_host"] = True

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def dropped(message: dict) -> None:  # starlette's own refusal, replaced below
            return None

        await self.check(scope, receive, dropped)
        if scope.pop("workbench.trusted_host", False):
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        host = Headers(scope=scope).get("host", "")
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        detail = (
            f"this server answers requests for {', '.join(self.allowed)} (any port), not for "
            f"Host {host!r}: other names are refused so that a web page cannot reach the model "
            "through DNS rebinding. Behind a proxy that forwards the browser's Host "
            f"(jupyter-server-proxy, VS Code or Colab port forwarding), set {HOSTS_ENV}="
            f"{name or '<host>'} (names separated by commas) in the environment of the process "
            "that starts the server, and start it again."
        )
        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)


def guard_app(app: Any, host: str = "localhost", limit: int = MAX_BODY_BYTES) -> Any:
    """Make ``app`` (a Starlette or FastAPI app, before it starts) refuse a request whose
    ``Host`` is neither one of :func:`trusted_hosts` nor of :func:`_extra_hosts` (400, naming
    :data:`HOSTS_ENV`) and a body over ``limit`` bytes (413).

    Examples:
        >>> from starlette.applications import Starlette
        >>> from starlette.testclient import TestClient
        >>> app = guard_app(Starlette(), "127.0.0.1", limit=10)
        >>> client = TestClient(app, base_url="http://127.0.0.1:8000")
        >>> [client.get("/", headers={"Host": host}).status_code
        ...  for host in ("evil.example", "localhost:8000")]  # no route: 404, past the guard
        [400, 404]
        >>> client.post("/", content=b"x" * 11).status_code
        413
    """
    allowed = trusted_hosts(host)
    allowed += [name for name in _extra_hosts() if name not in allowed]
    app.add_middleware(_BodyLimit, limit=limit)
    app.add_middleware(_HostCheck, allowed_hosts=allowed)
    app.add_middleware(_OpenAIErrors)  # outermost: the guards' refusals too
    return app


def openai_error(body: Any, status: int) -> Any:
    """An error response's JSON ``body`` in OpenAI's shape, ``{"error": {"message", "type",
    "param", "code"}}``, keeping its ``detail``: the openai client reads the reason from
    ``error.message`` only, and said just "Error code: 400" for FastAPI's ``{"detail"}``.

    Examples:
        >>> openai_error({"detail": "n=2: send 2 requests"}, 400)["error"]["message"]
        'n=2: send 2 requests'
        >>> openai_error({"error": "engine dead"}, 503)["error"]["type"]
        'server_error'
        >>> openai_error({"error": {"message": "kept"}}, 400)
        {'error': {'message': 'kept'}}
    """
    if not isinstance(body, dict) or isinstance(body.get("error"), dict):
        return body
    said = body.get("detail", body.get("error", ""))
    message = said if isinstance(said, str) else json.dumps(said, ensure_ascii=False)
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": None, "code": None}
    return {**body, "error": error}


def _validation_said(body: Any) -> Any:
    """FastAPI's refusal of a body it could not read (a list of pydantic errors, each echoing
    the input: the whole body) as one line that says what to send instead.

    Examples:
        >>> _validation_said({"detail": [{"type": "json_invalid", "loc": ["body", 28],
        ...     "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}]})
        {'detail': 'the body is not valid JSON: Expecting value at character 28'}
        >>> _validation_said({"detail": [{"type": "dict_type", "loc": ["body"],
        ...     "msg": "Input should be a valid dictionary", "input": "{...}"}]})["detail"]
        'the body must be a JSON object, sent with Content-Type: application/json'
    """
    errors = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        return body
    lines = []
    for error in errors:
        where = [str(part) for part in error.get("loc") or []]
        if error.get("type") == "json_invalid":
            why = (error.get("ctx") or {}).get("error") or error.get("msg")
            at = f" at character {where[1]}" if len(where) > 1 else ""
            lines.append(f"the body is not valid JSON: {why}{at}")
        elif where == ["body"]:
            lines.append("the body must be a JSON object, sent with Content-Type: application/json")
        else:
            lines.append(f"{'.'.join(where)}: {error.get('msg')}")
    return {"detail": "; ".join(dict.fromkeys(lines))}


class _OpenAIErrors:
    """ASGI middleware: every JSON error response in OpenAI's shape (:func:`openai_error`)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def reshaping(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                json_body = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and json_body:
                    start = message  # held until the whole (small) body is here
                    return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status = 400 if start["status"] == 422 else start["status"]  # as OpenAI says it
            try:
                said = _validation_said(json.loads(b"".join(chunks)))
                data = json.dumps(openai_error(said, status)).encode()
            except ValueError:  # not JSON after all: as it was
                data = b"".join(chunks)
            start = {**start, "status": status}
            headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data})

        await self.app(scope, receive, reshaping)


def guard_requests(host: str = "localhost") -> bool:
    """Make every app transformers' server builds :func:`guard_app`-ed for ``host``, the
    host it listens on; ``False`` when transformers builds it elsewhere.

    Examples:
        >>> guard_requests("127.0.0.1"), guard_requests("127.0.0.1")  # wraps once
        (True, True)
    """
    try:
        from transformers.cli.serving import server
    except ImportError:
        return False
    _listening["host"] = host

    def guarding(build: Any) -> Any:
        def building(*args: Any, **kwargs: Any) -> Any:
            return guard_app(build(*args, **kwargs), _listening["host"] or "localhost")

        return building

    return wrap_once(server, "build_server", "guards_requests", guarding)
