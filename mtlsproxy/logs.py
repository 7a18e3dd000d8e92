"""Log set-up (JSON or text lines) and the one place engine events become log lines.

Log lines carry facts about a connection (addresses, SNI, identity, step, reason, timings),
never key material: the engine's events hold none, and nothing else is logged from TLS.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from mtlsproxy.config.model import LogFormat, LogSettings
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import HandshakeComplete, HandshakeFailed, Tracer, TraceRecord
from mtlsproxy.forwarding.http.local import RequestRefusal
from mtlsproxy.forwarding.http2.faults import Http2Fault
from mtlsproxy.vocabulary.identity import PeerIdentity

log: Final = logging.getLogger("mtlsproxy")
access_log: Final = logging.getLogger("mtlsproxy.access")  # propagates to the "mtlsproxy" handler


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(created: float, msecs: float) -> str:
    """RFC 3339 UTC with milliseconds, the form collectors parse without configuration, of
    ``created`` (Unix time) and ``msecs`` (its milliseconds), as a ``LogRecord`` has them:
    Python 3.13 takes both from ``time.time_ns()``, where the float's own fraction can be a
    millisecond short. The seconds' text is formatted once a second, not once a line (an access
    line a connection); the pair is replaced whole, so a thread never reads one second's text
    for another."""
    global _second
    whole, text = _second
    if whole != int(created):
        whole = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int(msecs):03d}Z"


# One encoder for every line: ``json.dumps(..., default=str)`` builds a new one per call.
_json: Final = json.JSONEncoder(default=str)


class _LineFormatter(logging.Formatter):
    """A record's line from its values (``line``), which ``access`` also calls without one."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            _timestamp(record.created, record.msecs), record.levelname.lower(),
            record.getMessage(), getattr(record, "fields", {}), exception,
        )  # fmt: skip

    @staticmethod
    def line(
        stamp: str, level: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        raise NotImplementedError


class JSONFormatter(_LineFormatter):
    @staticmethod
    def line(
        stamp: str, level: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        """The line of a record with these values (``format``; ``access`` without a record)."""
        line: dict[str, Any] = {"time": stamp, "level": level, "msg": msg}
        line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return _json.encode(line)


# What ``logfmt_value`` made of strings it was given, by string: a line's usual values
# (listener, route, engine, version, cipher, identity, end...) recur on every line, and a
# lookup is what writing one of them then costs (``TextFormatter.line``). Bounded: strings up
# to _KEPT_LENGTH characters, _KEPT_MAX of them, emptied when full.
_written: Final[dict[str, str]] = {}
_KEPT_LENGTH: Final = 256
_KEPT_MAX: Final = 1024
_quoted: Final = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps makes an encoder a call


def logfmt_value(value: object) -> str:
    r"""One logfmt value: bare when it is a plain token, else double-quoted with ``\``, ``"``
    and control characters escaped, so a value can never forge another key or line. A
    sequence is comma-joined, a boolean is ``true``/``false``."""
    kind = type(value)
    if kind is int or kind is float:  # most fields of an access line; never quoted
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    # Only a plain str is kept in the table below: a str subclass (an enum's value) is
    # written through str() like any other object.
    kept = value if isinstance(value, str) and kind is str else None
    if kept is not None:
        text = kept
    elif isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    # str.isprintable is all(c.isprintable() for c in text), in C: the four `in` tests and it
    # cost a fraction of a generator over the characters, for each field of each line.
    if not (
        text.isprintable()
        and text
        and " " not in text
        and "=" not in text
        and '"' not in text
        and "\\" not in text
    ):
        text = _quoted(text)
    if kept is not None and len(kept) <= _KEPT_LENGTH:
        if len(_written) >= _KEPT_MAX:
            _written.clear()
        _written[kept] = text
    return text


class TextFormatter(_LineFormatter):
    """logfmt (``key=value``, the format Loki, Vector and Grafana parse): time, level and msg
    first, then the event's fields; fields without a value are left out."""

    @staticmethod
    def line(
        stamp: str, level: str, msg: str, fields: dict[str, Any], exception: str | None = None
    ) -> str:
        """The line of a record with these values (``format``; ``access`` without a record)."""
        written = _written
        pairs = [
            f"time={stamp} level={written.get(level) or logfmt_value(level)} "
            f"msg={written.get(msg) or logfmt_value(msg)}"
        ]
        for key, value in fields.items():
            # A string written before is looked up, a number written as it is: no call for
            # either (a call a field was most of an access line's cost).
            kind = type(value)
            if kind is str:
                pairs.append(f"{key}={written.get(value) or logfmt_value(value)}")
            elif kind is int or kind is float:
                pairs.append(f"{key}={value}")
            elif value is not None:
                pairs.append(f"{key}={logfmt_value(value)}")
        if exception is not None:
            pairs.append(f"exception={logfmt_value(exception)}")
        return " ".join(pairs)


# The handler ``configure`` installed and its formatter's ``line``: the access line is written
# to it without a LogRecord, the Logger's and the Handler's calls (``access``).
_direct: tuple[logging.StreamHandler[Any], Callable[..., str]] | None = None


def configure(settings: LogSettings) -> None:
    global _direct
    # Our lines carry no process, thread or process-name fields: not looking them up saves a
    # third of the cost of a LogRecord (an access line per connection).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    formatter = JSONFormatter() if settings.format is LogFormat.JSON else TextFormatter()
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(settings.level.upper())
    log.propagate = False
    # The access log is info-level facts: on with log.access whatever log.level says.
    access_log.setLevel(logging.INFO if settings.access else logging.CRITICAL)
    _direct = (handler, formatter.line)


def event(level: int, message: str, **fields: Any) -> None:
    """Log a message with structured fields (JSON keys, or key=value in text)."""
    if log.isEnabledFor(level):
        log.log(level, message, extra={"fields": fields})


def _identity_fields(identity: PeerIdentity | None) -> dict[str, Any]:
    if identity is None:
        return {}
    return {
        "client_subject": identity.subject,
        "client_spiffe_id": identity.spiffe_id,
        "client_sha256": identity.sha256,
        "client_serial": identity.serial,
    }


# ``_timing_fields``' keys, made once rather than per line.
_TIMING_KEYS: Final = {
    name: f"{name}_ms"
    for name in ("client_hello", "server_flight", "client_flight", "verify", "total")
}


def _timing_fields(outcome: HandshakeComplete | HandshakeFailed) -> dict[str, float]:
    timings = outcome.timings
    return {
        key: round(value * 1000, 3)
        for name, key in _TIMING_KEYS.items()
        if (value := getattr(timings, name)) is not None
    }


@dataclass(slots=True)
class AccessRecord:
    """What the access log says about one connection, at close."""

    listener: str
    engine: str
    peer: str
    sni: str | None
    outcome: HandshakeComplete | HandshakeFailed | None
    bytes_in: int
    bytes_out: int
    duration: float
    end: str  # how it ended: closed, handshake_failed, idle_timeout, http_refused...
    upstream: str | None


def access(record: AccessRecord) -> None:
    """One line per connection at close: who, what was negotiated, how it ended, how much."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    outcome = record.outcome
    fields: dict[str, Any] = {
        "listener": record.listener,
        "route": outcome.route if outcome is not None else None,
        "peer": record.peer,
        "sni": record.sni,
        "engine": record.engine,
    }
    if isinstance(outcome, HandshakeComplete):
        fields.update(
            result=outcome.result, alpn=outcome.alpn, version=outcome.version,
            cipher=outcome.cipher, resumed=outcome.session_reused,
        )  # fmt: skip
    elif isinstance(outcome, HandshakeFailed):
        fields.update(
            result=outcome.result, step=str(outcome.step), reason=str(outcome.reason),
            version=outcome.version,
        )  # fmt: skip
    if outcome is not None:
        if outcome.identity is not None:
            fields.update(_identity_fields(outcome.identity))
        fields.update(_timing_fields(outcome))
    fields.update(
        bytes_in=record.bytes_in, bytes_out=record.bytes_out,
        duration_ms=round(record.duration * 1000, 3), end=record.end, upstream=record.upstream,
    )  # fmt: skip
    if not _write_direct(fields):
        access_log.info("access", extra={"fields": fields})


def _write_direct(fields: dict[str, Any]) -> bool:
    """Write the access line straight to the handler ``configure`` installed, as it would
    have written it: the same line from the same formatter, under the handler's lock. Only
    while that handler is the one place the line would go and nothing filters it (a test's
    capture handler, a filter: false, and the caller logs it the usual way). A LogRecord and
    the calls through Logger and Handler were most of the line's cost, once a connection."""
    if _direct is None:
        return False
    handler, line = _direct
    handlers = log.handlers
    if (
        len(handlers) != 1
        or handlers[0] is not handler
        or access_log.handlers
        or access_log.filters
        or access_log.disabled
        or log.filters
        or log.disabled
        or handler.filters
        or handler.level > logging.INFO
    ):
        return False
    now = time.time()
    stamp = _timestamp(now, (now - int(now)) * 1000)  # msecs as LogRecord has them up to 3.12
    text = line(stamp, "info", "access", fields) + handler.terminator
    with handler.lock:  # type: ignore[union-attr]  # created by Handler.__init__
        try:
            stream = handler.stream
            stream.write(text)
            stream.flush()  # what handler.flush() does, under the lock this already holds
        except Exception:  # as Handler.emit: a failing stream is reported, never raised
            handler.handleError(logging.makeLogRecord({"msg": "access", "fields": fields}))
    return True


def tracer(listener: str, peer: str) -> Tracer | None:
    """A handshake trace for one connection, at debug level only (off by default: one line
    per handshake message). The engines put no key material in a trace record."""
    if not log.isEnabledFor(logging.DEBUG):
        return None

    def trace(record: TraceRecord) -> None:
        event(logging.DEBUG, f"trace {record.direction} {record.message}",
              listener=listener, peer=peer, **record.fields)  # fmt: skip

    return trace


def refused_request(
    listener: str,
    route: str,
    peer: str,
    refusal: RequestRefusal,
    outcome: HandshakeComplete | None,
) -> None:
    """One line per request the proxy answered itself: a refusal by ``http_authorization``
    (403, or 400 for an unsafe path) at info, with the request as sent (shortened) and who
    sent it; a 400 for the framing at warning (a client trying to smuggle, or a broken one).
    In audit mode (not ``enforced``) one line per forwarded request the rules would refuse, at
    info, with ``result=would_refuse``: the rollout reads these to fix clients or rules."""
    level = logging.INFO if refusal.method else logging.WARNING  # framing: no method known
    identity = outcome.identity if outcome is not None else None
    message = (
        f"HTTP request refused with {refusal.status}: {refusal.detail}"
        if refusal.enforced
        else f"HTTP request would be refused with {refusal.status} (audit mode, forwarded): "
        f"{refusal.detail}"
    )
    event(
        level,
        message,
        result=None if refusal.enforced else "would_refuse",
        listener=listener,
        route=route,
        peer=peer,
        status=refusal.status,
        rule=refusal.rule,
        reason=refusal.reason,
        method=refusal.method or None,
        target=refusal.target or None,
        verified=outcome.verified if outcome is not None else None,
        **_identity_fields(identity),
    )


def http2_error(listener: str, route: str, peer: str, fault: Http2Fault) -> None:
    """One line per HTTP/2 connection ended by a connection error: at warning when the client
    made it (hostile or broken), at error when the upstream did."""
    level = logging.WARNING if fault.side == "client" else logging.ERROR
    event(
        level,
        f"HTTP/2 connection error by the {fault.side}: {fault.reason}: {fault.detail}",
        listener=listener,
        route=route,
        peer=peer,
        side=str(fault.side),
        reason=str(fault.reason),
        error_code=fault.error_code,
    )


def handshake(
    listener: str,
    peer: str,
    hello: ClientHello | None,
    outcome: HandshakeComplete | HandshakeFailed,
) -> None:
    """One line per handshake: failures at info, successes at debug. The JA4 fingerprint of
    the ClientHello tells which client software it was (a fleet of one kind failing at once)."""
    quiet = isinstance(outcome, HandshakeComplete) and outcome.would_refuse is None
    if not log.isEnabledFor(logging.DEBUG if quiet else logging.INFO):
        return
    timings = _timing_fields(outcome)
    who = _identity_fields(outcome.identity)
    common = {
        "listener": listener,
        "route": outcome.route,
        "peer": peer,
        "sni": hello.server_name if hello else None,
        "ja4": hello.ja4() if hello else None,
    }
    if isinstance(outcome, HandshakeComplete) and outcome.would_refuse is not None:
        refusal = outcome.would_refuse
        event(
            logging.INFO,
            f"handshake would be refused at {refusal.step}: {refusal.detail} "
            "(client_auth.enforce is false: admitted, forwarded as unverified)",
            **common,
            result="would_refuse",
            step=str(refusal.step),
            reason=str(refusal.reason),
            **who,
            **timings,
        )
        return
    if isinstance(outcome, HandshakeComplete):
        event(
            logging.DEBUG,
            "handshake ok",
            **common,
            version=outcome.version,
            cipher=outcome.cipher,
            alpn=outcome.alpn,
            resumed=outcome.session_reused,
            **who,
            **timings,
        )
        return
    event(
        logging.INFO,
        f"handshake {outcome.result} at {outcome.step}: {outcome.detail}",
        **common,
        result=outcome.result,
        step=str(outcome.step),
        reason=str(outcome.reason),
        alert=outcome.alert.name.lower() if outcome.alert is not None else None,
        **who,
        **timings,
    )
