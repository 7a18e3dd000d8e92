"""The debug handshake trace: every message both ways with its key fields, never a secret."""

from __future__ import annotations

from mtlsproxy.engine.events import TraceRecord
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from tests.engine.native.harness import FakeClock, build_route, client_context, run_handshake, table


def traced(engine_class: type, pki: PkiFiles) -> tuple[list[TraceRecord], object]:
    records: list[TraceRecord] = []
    engine = engine_class(table(build_route(pki)).select, FakeClock(), records.append)
    run_handshake(engine, client_context(pki, "client"))
    return records, engine


def test_native_trace_lists_every_message(pki: PkiFiles) -> None:
    records, engine = traced(SelectingEngine, pki)
    steps = [(r.direction, r.message) for r in records]
    assert steps[:7] == [
        ("<-", "ClientHello"),
        ("->", "ServerHello"),
        ("->", "EncryptedExtensions"),
        ("->", "CertificateRequest"),
        ("->", "Certificate"),
        ("->", "CertificateVerify"),
        ("->", "Finished"),
    ]
    assert ("<-", "Certificate") in steps and ("<-", "Finished") in steps
    hello = records[0].fields
    assert hello["sni"] == "localhost" and "0x0304" in hello["versions"]  # type: ignore[operator]
    client = next(r for r in records if r.direction == "<-" and r.message == "Certificate")
    assert client.fields["subject"] == "CN=frontend"
    # Never key material: no traffic secret appears in any field.
    text = repr(records)
    for secret in engine.chosen.debug_traffic_secrets().values():  # type: ignore[attr-defined]
        assert secret.hex() not in text and repr(secret) not in text


def test_openssl_trace_shows_what_it_can_see(pki: PkiFiles) -> None:
    records, _ = traced(OpenSSLEngine, pki)
    steps = [(r.direction, r.message) for r in records]
    assert steps[0] == ("<-", "ClientHello")
    assert ("->", "server flight") in steps and ("--", "handshake complete") in steps
