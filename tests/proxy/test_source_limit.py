"""``limits.failed_handshakes_per_source`` over real sockets: a source (127.0.0.2) that takes
our flight and closes, again and again, is refused at accept once its budget is spent, counted
and logged once; a client on 127.0.0.1 keeps completing mutual-TLS handshakes meanwhile. And
the setting as the loader reads it."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtlsproxy.config import ConfigError, load_config
from mtlsproxy.config.model import FailedHandshakeBudget
from mtlsproxy.pki import PkiFiles
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, RunningProxy, Upstream, eventually
from tests.proxy.test_hostile import mini_client

ATTACKER = "127.0.0.2"  # all of 127.0.0.0/8 is loopback on Linux
BURST = 4
# A token every 100 s: no refill within a test, however slow the machine (the refill is timed
# exactly in test_source_budget.py).
BUDGET = f"failed_handshakes_per_source: {{rate: 0.01, burst: {BURST}}}"
MESSAGE = "failed_handshakes_per_source"


def with_limits(text: str, extra: str) -> str:
    """conftest's config with ``extra`` added to the listener's ``limits`` mapping."""
    assert "buffer_size: 64KiB}" in text
    return text.replace("buffer_size: 64KiB}", f"buffer_size: 64KiB, {extra}}}", 1)


@pytest.fixture
def proxy(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    text = render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info", engine="native")
    path = tmp_path / "proxy.yaml"
    path.write_text(with_limits(text, BUDGET).replace("format: text", "format: json"))
    process = ProxyProcess(path)
    yield process
    process.process.terminate()
    process.process.wait(timeout=10)
    process.assert_no_traceback()


def sample(process: ProxyProcess, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{process.metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def abandon(pki: PkiFiles, port: int, source: str = ATTACKER) -> bool:
    """From ``source``: a ClientHello, our whole flight read (up to the server's Finished),
    then close. False if the proxy closed the connection without a flight."""
    client = mini_client(pki)
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(client.client_hello())
            while not client.server_finished:
                data = sock.recv(65536)
                if not data:
                    return False
                client.receive(data)
        except ConnectionError:
            return False
    return True


def budget_lines(process: ProxyProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in process.lines if line.startswith("{")]
    return [line for line in lines if MESSAGE in str(line.get("msg"))]


def test_a_source_that_abandons_its_handshakes_is_refused_at_accept(
    proxy: ProxyProcess, pki: PkiFiles
) -> None:
    good = Client(pki, proxy.port)
    for round_ in range(BURST):
        assert abandon(pki, proxy.port)
        assert good.roundtrip(b"good %d" % round_) == b"good %d" % round_
    # Once the proxy has seen every close, the flights are all paid for: the next connection
    # from 127.0.0.2 gets none.
    assert eventually(lambda: sample(proxy, "mtlsproxy_connections_active") == 0)
    handshakes = sample(proxy, "mtlsproxy_handshakes_total")
    refused = 0
    for round_ in range(5):
        assert not abandon(pki, proxy.port)
        refused += 1
        # 127.0.0.1 completes handshakes with its certificate all along.
        assert good.roundtrip(b"still %d" % round_) == b"still %d" % round_
    rejected = "mtlsproxy_connections_rejected_total"
    assert sample(proxy, rejected, reason="source_budget") == refused
    # Refused before any engine work: only the good handshakes were added.
    assert sample(proxy, "mtlsproxy_handshakes_total") == handshakes + 5
    # One line for the source, not one per connection.
    assert eventually(lambda: len(budget_lines(proxy)) == 1)
    (line,) = budget_lines(proxy)
    assert line["source"] == ATTACKER and line["refused"] == 1 and line["level"] == "warning"


def test_a_source_that_completes_its_handshakes_is_never_refused(
    proxy: ProxyProcess, pki: PkiFiles
) -> None:
    """More handshakes than the burst from 127.0.0.1, some abandoned (fewer than the
    completions): each completion pays for an abandon, none is refused."""
    good = Client(pki, proxy.port)
    for round_ in range(3 * BURST):
        assert good.roundtrip(b"%d" % round_) == b"%d" % round_
        assert abandon(pki, proxy.port, source="127.0.0.1")
    assert sample(proxy, "mtlsproxy_connections_rejected_total", reason="source_budget") == 0
    assert budget_lines(proxy) == []


def load_limits(tmp_path: Path, pki: PkiFiles, extra: str | None):  # type: ignore[no-untyped-def]
    text = render_config(pki, "127.0.0.1:9")
    path = tmp_path / "proxy.yaml"
    path.write_text(with_limits(text, extra) if extra else text)
    return load_config(path).listeners[0].limits


def test_the_setting(tmp_path: Path, pki: PkiFiles) -> None:
    """On by default (10 a second, burst 100), ``false`` turns it off, ``true`` is the
    defaults, each key optional."""
    assert load_limits(tmp_path, pki, None).failed_handshakes_per_source == (
        FailedHandshakeBudget(rate=10.0, burst=100)
    )
    off = load_limits(tmp_path, pki, "failed_handshakes_per_source: false")
    assert off.failed_handshakes_per_source is None
    on = load_limits(tmp_path, pki, "failed_handshakes_per_source: true")
    assert on.failed_handshakes_per_source == FailedHandshakeBudget()
    some = load_limits(tmp_path, pki, "failed_handshakes_per_source: {rate: 0.5}")
    assert some.failed_handshakes_per_source == FailedHandshakeBudget(rate=0.5, burst=100)
    both = load_limits(tmp_path, pki, "failed_handshakes_per_source: {rate: 2, burst: 7}")
    assert both.failed_handshakes_per_source == FailedHandshakeBudget(rate=2.0, burst=7)


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        ("{rate: 0}", "rate", "must be a number above zero"),
        ("{rate: fast}", "rate", "expected a number (per second)"),
        ("{burst: 0}", "burst", "0 must be at least 1"),
        ("{burst: 1.5}", "burst", "expected an integer"),
        ("{rates: 1}", "rates", "did you mean 'rate'?"),
        ("10", "", "expected a mapping of rate and burst, or false (off)"),
    ],
)
def test_wrong_settings_are_named(
    tmp_path: Path, pki: PkiFiles, value: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_limits(tmp_path, pki, f"failed_handshakes_per_source: {value}")
    (problem,) = caught.value.problems
    path = "listeners[0].limits.failed_handshakes_per_source"
    assert problem.key_path == (f"{path}.{key}" if key else path)
    assert message in problem.message


def test_a_reload_keeps_the_debts_and_can_turn_the_budget_off(
    tmp_path: Path, pki: PkiFiles, upstream: Upstream
) -> None:
    """SIGHUP's reload: the same settings do not refill a flood's buckets; ``false`` lets
    the source in again."""
    text = render_config(pki, f"127.0.0.1:{upstream.port}", log_level="info", engine="native")
    path = tmp_path / "proxy.yaml"
    path.write_text(with_limits(text, BUDGET))
    proxy = RunningProxy(path)
    try:
        port = proxy.port()
        for _ in range(BURST):
            assert abandon(pki, port)
        assert eventually(lambda: not abandon(pki, port))
        assert proxy._call(proxy.proxy.reload_config())
        assert not abandon(pki, port)
        path.write_text(with_limits(text, "failed_handshakes_per_source: false"))
        assert proxy._call(proxy.proxy.reload_config())
        assert abandon(pki, port)
        assert Client(pki, port).roundtrip(b"after") == b"after"
    finally:
        proxy.stop()
