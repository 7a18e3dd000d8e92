"""Requests the proxy answers itself in HTTP mode, and what it counts and logs about them.

Two kinds. A request whose framing cannot be trusted (``request.HTTPRefused``) ends the
connection with a 400: nothing after it can be delimited. A request refused by the route's
``http_authorization`` (``policy.paths``) is well framed: it gets a ``LocalAnswer`` (403, or
400 for an unsafe path), its content is read and dropped, and the connection goes on with the
next request, unless that request asked to close or could leave its content unsent (``Expect:
100-continue``). The answer takes the refused request's place in the response stream: it is
sent once the upstream has answered every request before it, and what the client sent after it
waits until then (``request.RequestRewriter`` keeps it; the proxy stops reading). In audit
mode (``http_authorization.enforce: false``) such a request gets no answer: it is forwarded,
and its ``RequestRefusal`` (not ``enforced``) is only counted and logged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAX_LOGGED_TARGET = 256  # characters of a refused request-target kept for the log line

_PHRASES = {400: b"Bad Request", 403: b"Forbidden"}
_BODIES = {
    "unsafe_path": b"Bad Request: the request target is not a normalized path; "
    b"it was not forwarded\n",
    "not_verified": b"Forbidden: this path needs a verified client certificate\n",
    "identity_not_allowed": b"Forbidden: this client certificate is not allowed on this path\n",
    "denied": b"Forbidden: this path is not served to any client\n",
}


@dataclass(frozen=True, slots=True)
class RequestRefusal:
    """One refused request, for the metric (``rule`` and ``reason`` are bounded labels: a rule
    name or index from the config, ``default``, ``none``; a fixed reason) and the log line
    (``detail``, and the request's ``method`` and ``target`` as sent, shortened).

    ``enforced`` False: the route's rules are in audit mode (``http_authorization.enforce:
    false``); the request was forwarded, and this travels the same way as a refusal
    (``take_refusals``) to be counted and logged as would-refuse, with the ``status`` the
    proxy would have answered."""

    status: int
    reason: str
    rule: str
    detail: str
    method: str = ""
    target: str = ""
    enforced: bool = True

    def of_request(self, method: bytes, target: bytes) -> RequestRefusal:
        """This refusal with the request's method and target (shortened) for the log line."""
        return dataclasses.replace(self, method=method.decode("latin-1"), target=shortened(target))


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """The proxy's response to one refused, well-framed request. ``close``: the connection
    ends after it (the request asked so, or its content may never come)."""

    refusal: RequestRefusal
    response: bytes
    close: bool


# What a client is answered when the upstream cannot be reached (502) or did not accept the
# connection in time (504), by status: the reason phrase and the body.
GATEWAY_ERRORS = {
    502: (b"Bad Gateway", b"Bad Gateway: the upstream service cannot be reached\n"),
    504: (b"Gateway Timeout", b"Gateway Timeout: the upstream service did not answer in time\n"),
}


def refusal_body(refusal: RequestRefusal) -> bytes:
    """The short text that explains a refusal to the client (HTTP/1.1 and HTTP/2 alike)."""
    return _BODIES.get(refusal.reason, _PHRASES[refusal.status] + b"\n")


def local_answer(refusal: RequestRefusal, *, close: bool, head_only: bool) -> LocalAnswer:
    """A complete response (a short text body, none to HEAD: RFC 9110 section 9.3.2)."""
    body = refusal_body(refusal)
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n" % (
        refusal.status,
        _PHRASES[refusal.status],
        len(body),
        b"Connection: close\r\n" if close else b"",
    )
    return LocalAnswer(refusal, head if head_only else head + body, close)


def shortened(target: bytes) -> str:
    """A request-target for a log line: latin-1, at most ``MAX_LOGGED_TARGET`` characters."""
    text = target.decode("latin-1")
    return text if len(text) <= MAX_LOGGED_TARGET else text[:MAX_LOGGED_TARGET] + "..."
