"""``tls.session_tickets``: the key file and max_age, loaded, inherited key by key by routes,
and the key file checked by ``check`` (readable, one key of 32 bytes or more per line, at least
one) without ever printing a key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mtlsproxy.config import ConfigError, load_config, load_config_with_warnings
from mtlsproxy.engine.native.tickets import format_ticket_keys, new_ticket_key
from mtlsproxy.pki import init

CONFIG = """\
listeners:
  - name: api
    listen: 127.0.0.1:18443
    engine: native
    tls:
      certificates:
        - {{certificate: certs/server.crt, key: certs/server.key}}
{tickets}    upstream: 127.0.0.1:8080
    routes:
      - sni: a.example.org
        tls: {{session_tickets: {{max_age: 30m}}}}
      - sni: b.example.org
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tickets")
    init(directory / "certs")
    return directory


def write(base: Path, tickets: str) -> Path:
    path = base / "config.yaml"
    path.write_text(CONFIG.format(tickets=tickets))
    return path


def errors(path: Path) -> list[str]:
    try:
        load_config_with_warnings(path)
    except ConfigError as error:
        return [str(p) for p in error.problems if p.severity == "error"]
    return []


def test_defaults_without_the_section(base: Path) -> None:
    config = load_config(write(base, ""))
    listener = config.listeners[0]
    for route in (listener.default_route, *listener.routes):
        expected = 1800.0 if route.name == "a_example_org" else 86400.0
        assert route.tls.session_tickets.max_age == expected
        assert route.tls.session_tickets.keys is None


def test_a_key_file_and_max_age_inherited_key_by_key(base: Path) -> None:
    keys = base / "ticket.keys"
    keys.write_bytes(format_ticket_keys([new_ticket_key(), new_ticket_key()], "newest first"))
    tickets = "      session_tickets:\n        keys: ticket.keys\n        max_age: 12h\n"
    listener = load_config(write(base, tickets)).listeners[0]
    default, a, b = listener.default_route, *listener.routes
    assert default.tls.session_tickets.keys == keys.absolute()
    assert default.tls.session_tickets.max_age == 12 * 3600
    # a route setting only max_age keeps the listener's key file
    assert a.tls.session_tickets.keys == keys.absolute()
    assert a.tls.session_tickets.max_age == 1800
    assert b.tls.session_tickets == default.tls.session_tickets


SECRET = base64.b64encode(b"s" * 31).decode()
GOOD_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no key"),
        (b"# only a comment\n\n", "holds no key"),
        (f"{GOOD_KEY}\n{SECRET}\n".encode(), "line 2 holds a key of 31"),
        (b"# header\nnot base64!\n", "line 2 is not a base64 key"),
        (b"x" * 70_000, "larger than 64 KiB"),
    ],
    ids=["empty", "comments_only", "short_key", "not_base64", "too_large"],
)
def test_check_refuses_a_bad_key_file_and_never_prints_a_key(
    base: Path, content: bytes, message: str
) -> None:
    (base / "bad.keys").write_bytes(content)
    found = errors(write(base, "      session_tickets: {keys: bad.keys}\n"))
    assert len(found) == 1, found
    assert "listeners[0].tls.session_tickets.keys:" in found[0]
    assert "not a valid session ticket key file" in found[0] and message in found[0]
    assert SECRET not in found[0] and GOOD_KEY not in found[0]


def test_check_refuses_an_unreadable_key_file(base: Path) -> None:
    found = errors(write(base, "      session_tickets: {keys: missing.keys}\n"))
    assert len(found) == 1 and "cannot read" in found[0], found
    assert ":8: listeners[0].tls.session_tickets.keys:" in found[0]
