"""``mtlsproxy tickets generate``: one new key line of a ``tls.session_tickets.keys`` file."""

from __future__ import annotations

from mtlsproxy.engine.native.tickets import MIN_KEY_SIZE, parse_ticket_keys
from tests.test_cli import cli


def test_tickets_generate_prints_one_new_key_line() -> None:
    first, second = cli("tickets", "generate"), cli("tickets", "generate")
    assert first.returncode == second.returncode == 0
    assert first.stdout.count("\n") == 1 and first.stderr == ""
    (one,) = parse_ticket_keys(first.stdout.encode())
    (two,) = parse_ticket_keys(second.stdout.encode())
    assert len(one) == MIN_KEY_SIZE and one != two
    # prepending a new line rotates: the file stays valid, the new key first
    assert parse_ticket_keys((second.stdout + first.stdout).encode()) == [two, one]
