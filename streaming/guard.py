"""What every request to the live server passes through: the bearer token, bounded JSON, errors as JSON, the
access log.

Every refusal is a JSON object `{"error": "<what is wrong and what to do>"}` with a 4xx status, whatever raised
it: the project's InputError (400), TooLargeError (413), aiohttp's own refusals (413 for a body over the limit,
404, 405), and a missing or wrong token (401). Anything else is a bug: it is logged with its traceback and the
caller gets a 500 JSON without one. One access-log line per request (method, path, status, ms) goes to the
`actorcast.access` logger at INFO: never a header (the token) or a body (SDP, portraits).
"""

import asyncio
import hmac
import json
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from actorcast.models.errors import InputError, TooLargeError
from actorcast.streaming import limits

access_log = logging.getLogger("actorcast.access")
log = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def parse_json(body: bytes, expected: str) -> object:
    """A request body as JSON; InputError naming `expected` when it is not JSON or is nested absurdly deep
    (Python's parser stops with RecursionError after about a thousand levels)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"the body is not JSON ({e}); send {expected}") from None
    except RecursionError:
        raise InputError(f"the body's JSON is nested too deep; send {expected}") from None


async def read_body(request: web.Request) -> bytes:
    """The whole body, refused with 408 when a slow client has not sent it within limits.BODY_TIMEOUT_S (read
    at each call) and with 413 past the app's client_max_size (aiohttp's own check)."""
    timeout_s = limits.BODY_TIMEOUT_S
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(text=json.dumps({"error": f"the body did not arrive within {timeout_s:.0f} s; "
                                                              "send it at once"}),
                                     content_type="application/json") from None


def bearer_matches(header: str, token: str) -> bool:
    """`Authorization: Bearer <token>`; the scheme's name is case-insensitive (RFC 9110), the token is not."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _http_reason(e: web.HTTPException, request: web.Request) -> str:
    """aiohttp's own refusal (413, 404, 405, ...) as one line that says what to do."""
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return f"the body is too large: at most {request.client_max_size / 2**20:g} MiB per request"
    if e.content_type == "application/json":
        try:
            return json.loads(e.text)["error"]
        except (ValueError, KeyError, TypeError):
            pass
    if isinstance(e, web.HTTPNotFound):
        return "no such path: see GET / for the page, POST /offer for a call"
    if isinstance(e, web.HTTPMethodNotAllowed):
        return f"{e.method} is not allowed here; use {', '.join(sorted(e.allowed_methods))}"
    return e.reason


def guard(token: str | None, protected: Callable[[str], bool]) -> Callable:
    """The middleware: token check on `protected` paths, every error as JSON, one access-log line per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.monotonic()
        status = 500  # unless a response or an HTTP exception (a redirect) says otherwise
        try:
            response = await _answer(request, handler, token, protected)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            access_log.info("%s %s %d %.0f ms", request.method, request.path, status,
                            (time.monotonic() - t0) * 1000.0)

    return middleware


async def _answer(request: web.Request, handler: Handler, token: str | None,
                  protected: Callable[[str], bool]) -> web.StreamResponse:
    if token and protected(request.path) and not bearer_matches(request.headers.get("Authorization", ""), token):
        return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'")
    try:
        return await handler(request)
    except TooLargeError as e:
        return error(413, str(e))
    except InputError as e:
        return error(400, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = error(e.status, _http_reason(e, request))
        if e.status == 408:  # the rest of the body may still come: close rather than read it as a next request
            response.force_close()
        return response
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "the server failed on this request (a bug; its log has the details)")
