"""Native TLS 1.3 resumption across processes: the workers of one supervisor share its ticket
keys (a private file, rotated), and separate proxies (replicas) sharing a key file resume each
other's tickets; rotating that file keeps old tickets while their key is listed."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import signal
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlsproxy.engine.native.tickets import (
    PREVIOUS_KEYS_KEPT,
    format_ticket_keys,
    new_ticket_key,
    parse_ticket_keys,
)
from mtlsproxy.pki import PkiFiles
from mtlsproxy.routing.tickets import SHARED_KEYS_ENV
from mtlsproxy.supervisor import SharedTicketKeys
from tests.proxy.conftest import render_config
from tests.proxy.harness import Client, ProxyProcess, Upstream, echo_through, eventually
from tests.proxy.test_workers import free_port, metric_sum, worker_pids

RESUMED = "mtlsproxy_tls_resumed_sessions_total"


def native_config(pki: PkiFiles, upstream: Upstream, listen: str = "127.0.0.1:0") -> str:
    return render_config(
        pki, f"127.0.0.1:{upstream.port}", log_level="info", listen=listen, engine="native",
        min_version="1.3",
    )  # fmt: skip


def connect(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bool, ssl.SSLSession]:
    """One connection through the echo upstream: whether it resumed, and its latest session
    (the ticket it was sent)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        assert echo_through(tls, b"ping") == b"ping"
        latest = tls.session
        assert latest is not None
        return tls.session_reused, latest


def stop(process: ProxyProcess) -> None:
    if process.process.poll() is None:
        process.process.terminate()
        process.process.wait(timeout=15)
    process.assert_no_traceback()


@pytest.fixture
def workers(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyProcess]:
    path = tmp_path / "proxy.yaml"
    path.write_text("workers: 2\n" + native_config(pki, upstream, f"127.0.0.1:{free_port()}"))
    process = ProxyProcess(path)
    assert eventually(lambda: process.status("/readyz") == 200, timeout=20)
    yield process
    stop(process)
    for pid in worker_pids(process).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_every_worker_resumes_every_workers_tickets(workers: ProxyProcess, pki: PkiFiles) -> None:
    """SO_REUSEPORT spreads the connections over both workers: unshared keys would resume about
    half of them."""
    context = Client(pki, workers.port).context()
    reused, session = connect(workers.port, context)
    assert not reused
    count = 30
    for _ in range(count):
        reused, session = connect(workers.port, context, session)
        assert reused
    assert eventually(lambda: metric_sum(workers, RESUMED) == count)


def test_the_shared_keys_are_private_and_never_logged(workers: ProxyProcess) -> None:
    paths = set()
    for pid in worker_pids(workers).values():
        environ = Path("/proc", str(pid), "environ").read_bytes().split(b"\0")
        (value,) = [e for e in environ if e.startswith(SHARED_KEYS_ENV.encode() + b"=")]
        paths.add(Path(value.split(b"=", 1)[1].decode()))
    (path,) = paths  # one file for both
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_uid == os.getuid()
    keys = parse_ticket_keys(path.read_bytes())
    assert len(keys) == 2  # the sealing key, and the next one
    log = "".join(workers.lines)
    for key in keys:
        assert base64.b64encode(key).decode() not in log and key.hex() not in log


def test_shared_keys_rotate_keeping_what_live_tickets_need(tmp_path: Path) -> None:
    shared = SharedTicketKeys(tmp_path)
    first = parse_ticket_keys(shared.path.read_bytes())
    seen = [first]
    for _ in range(PREVIOUS_KEYS_KEPT + 3):
        shared.rotate()
        seen.append(parse_ticket_keys(shared.path.read_bytes()))
        assert stat.S_IMODE(shared.path.stat().st_mode) == 0o600
    for before, after in itertools.pairwise(seen):
        assert after[0] == before[-1]  # the next key, known to every worker, now seals
        assert after[1] == before[0]
        assert set(before[:-1]) - set(after) <= {before[-2]}  # at most the oldest goes
    assert len(seen[-1]) == 1 + (PREVIOUS_KEYS_KEPT + 1) + 1
    assert list(tmp_path.iterdir()) == [shared.path]  # no temporary file left


def replica(tmp_path: Path, pki: PkiFiles, upstream: Upstream, name: str) -> ProxyProcess:
    text = native_config(pki, upstream).replace(
        '      min_version: "1.3"\n',
        '      min_version: "1.3"\n      session_tickets: {keys: ticket.keys}\n',
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + "reload:\n  interval: 100ms\n")
    return ProxyProcess(path)


@pytest.fixture
def replicas(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[list[ProxyProcess]]:
    (tmp_path / "ticket.keys").write_bytes(format_ticket_keys([new_ticket_key()]))
    running = [replica(tmp_path, pki, upstream, name) for name in ("a", "b")]
    yield running
    for process in running:
        stop(process)


def rewrite_keys(process: ProxyProcess, path: Path, keys: list[bytes]) -> None:
    path.write_bytes(format_ticket_keys(keys))
    process.wait_for(r"(reloaded \(files\))", timeout=10)


def test_replicas_sharing_a_key_file_resume_each_others_tickets_across_a_rotation(
    replicas: list[ProxyProcess], pki: PkiFiles, tmp_path: Path
) -> None:
    a, b = replicas
    path = tmp_path / "ticket.keys"
    (old,) = parse_ticket_keys(path.read_bytes())
    context = Client(pki, a.port).context()
    _, from_a = connect(a.port, context)
    reused, _ = connect(b.port, context, from_a)
    assert reused and metric_sum(b, RESUMED) == 1
    # rotation: the new key prepended, the old one kept: the old ticket still resumes
    new = new_ticket_key()
    rewrite_keys(b, path, [new, old])
    reused, from_b = connect(b.port, context, from_a)
    assert reused  # and from_b is sealed with the new key, which a does not know yet
    rewrite_keys(a, path, [new, old])
    assert connect(a.port, context, from_b)[0]
    # the old key removed: its tickets no longer resume, the new key's still do
    rewrite_keys(a, path, [new])
    assert not connect(a.port, context, from_a)[0]
    assert connect(a.port, context, from_b)[0]
    assert not re.search(re.escape(base64.b64encode(new).decode()), "".join(a.lines + b.lines))
