"""Text logs are logfmt: a timestamp, quoting that no field value can break out of."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from mtlsproxy import logs
from mtlsproxy.config.model import LogFormat, LogSettings
from mtlsproxy.engine.events import HandshakeComplete, HandshakeTimings
from mtlsproxy.logs import JSONFormatter, TextFormatter, logfmt_value

# A logfmt pair: key=bare or key="quoted with \\ escapes".
PAIR = re.compile(r'([a-z_0-9]+)=("(?:[^"\\]|\\.)*"|[^ "=]+)')


def record(message: str, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("mtlsproxy", logging.INFO, __file__, 1, message, None, None)
    entry.fields = fields  # type: ignore[attr-defined]
    return entry


def parse(line: str) -> dict[str, str]:
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return dict(pairs)


def test_a_line_starts_with_time_level_and_message() -> None:
    line = TextFormatter().format(record("handshake ok", route="default"))
    parsed = parse(line)
    assert list(parsed)[:3] == ["time", "level", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])
    assert parsed["level"] == "info" and parsed["msg"] == '"handshake ok"'
    assert parsed["route"] == "default"


def test_none_is_left_out_and_sequences_are_joined() -> None:
    parsed = parse(TextFormatter().format(record("x", alpn=None, routes=("a", "b"), ok=False)))
    assert "alpn" not in parsed
    assert parsed["routes"] == "a,b" and parsed["ok"] == "false"


HOSTILE = ['CN=a "b"', "a\nlevel=error", "x=y", "back\\slash", "", "tab\there", "é ü"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_value_cannot_forge_a_key_or_a_line(hostile: str) -> None:
    line = TextFormatter().format(record("m", subject=hostile))
    assert "\n" not in line
    parsed = parse(line)
    assert set(parsed) == {"time", "level", "msg", "subject"}
    value = parsed["subject"]
    if value.startswith('"'):
        value = json.loads(value)
    assert value == hostile


@pytest.mark.parametrize("value", [*HOSTILE, "plain", "127.0.0.1:443", "x" * 300])
def test_a_string_written_again_is_written_alike(value: str) -> None:
    """The second line takes the value's text from what the first one made of it."""
    logs._written.clear()
    first = TextFormatter.line("t", "info", "m", {"v": value})
    assert TextFormatter.line("t", "info", "m", {"v": value}) == first
    assert first == f"time=t level=info msg=m v={logfmt_value(value)}"


def test_the_strings_kept_for_later_lines_are_bounded() -> None:
    for index in range(3 * logs._KEPT_MAX):
        logfmt_value(f"value-{index}")
        assert len(logs._written) <= logs._KEPT_MAX
    logfmt_value("x" * (logs._KEPT_LENGTH + 1))
    assert "x" * (logs._KEPT_LENGTH + 1) not in logs._written


def test_plain_tokens_stay_bare() -> None:
    assert logfmt_value("127.0.0.1:443") == "127.0.0.1:443"
    assert logfmt_value("spiffe://example.org/ns/a") == "spiffe://example.org/ns/a"
    assert logfmt_value(12.5) == "12.5"


def test_json_lines_keep_their_shape() -> None:

    line = json.loads(JSONFormatter().format(record("m", alpn=None, route="r")))
    assert line["msg"] == "m" and line["alpn"] is None and line["route"] == "r"
    assert line["time"].endswith("Z")


def access_record() -> logs.AccessRecord:
    timings = HandshakeTimings(0.0001, 0.0003, 0.0004, 0.0005, 0.00071)
    outcome = HandshakeComplete(
        route="default", version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", alpn=None,
        client_certificate_presented=False, identity=None, session_reused=False, timings=timings,
    )  # fmt: skip
    return logs.AccessRecord(
        listener="api", engine="native", peer="127.0.0.1:4000", sni='a "b"', outcome=outcome,
        bytes_in=1, bytes_out=2, duration=0.0012345, end="closed", upstream=None,
    )  # fmt: skip


@pytest.mark.parametrize("form", [LogFormat.TEXT, LogFormat.JSON])
def test_the_access_line_written_directly_is_the_logged_line(
    form: LogFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``access`` writes its line without a LogRecord to the handler ``configure`` installed;
    with another handler there, it logs the usual way: both lines are the same."""
    monkeypatch.setattr(logs, "_direct", None)
    monkeypatch.setattr(logs.log, "handlers", [])  # configure's handler is dropped after
    monkeypatch.setattr(time, "time", lambda: 1700000000.25)
    monkeypatch.setattr(time, "time_ns", lambda: 1700000000_250000000)  # LogRecord's, 3.13+
    logs.configure(LogSettings(format=form))
    direct, logged = io.StringIO(), io.StringIO()
    handler = logs.log.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(direct)
    logs.access(access_record())
    other = logging.StreamHandler(logged)
    other.setFormatter(handler.formatter)
    logs.log.addHandler(other)  # a second place for the line: the usual way, to both
    logs.access(access_record())
    first, second = direct.getvalue().splitlines()
    assert first == second == logged.getvalue().rstrip("\n")
    assert "time=2023-11-14T22:13:20.250Z" in first or '"2023-11-14T22:13:20.250Z"' in first
    assert "duration_ms" in first and "1.234" in first
