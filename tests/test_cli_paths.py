"""``mtlsproxy explain --path --method`` and ``check`` on the per-path example
(``config/http-paths.yaml``), run as real subprocesses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtlsproxy import pki
from tests.test_cli import EXAMPLES, FRONTEND, cli


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("paths")
    shutil.copy(EXAMPLES / "http-paths.yaml", directory)
    pki.init(directory / "certs")
    return directory


def explain(example: Path, cert: str, *args: str):  # type: ignore[no-untyped-def]
    return cli(
        "explain", "-c", example / "http-paths.yaml", "--cert", example / "certs" / cert, *args
    )


@pytest.mark.parametrize(
    ("cert", "args", "code", "decides", "verdict"),
    [
        ("client.crt", ("--path", "/admin/users"), 0, "rule admin decides", "ADMITTED"),
        ("client-other.crt", ("--path", "/admin/users"), 1, "rule admin decides",
         "REFUSED with 403 Forbidden by rule admin (identity_not_allowed)"),
        ("client-other.crt", ("--path", "/api/items?page=2", "--method", "POST"), 0,
         "rule api decides", "ADMITTED"),
        ("client-other.crt", ("--path", "/api/items", "--method", "DELETE"), 1,
         "the default decides", "REFUSED with 403 Forbidden by the default (denied)"),
        ("client.crt", ("--path", "/%61dmin"), 1, "refused before any rule",
         "REFUSED with 400 Bad Request before any rule (unsafe_path)"),
    ],
)  # fmt: skip
def test_explain_says_which_rule_decides(
    example: Path, cert: str, args: tuple[str, ...], code: int, decides: str, verdict: str
) -> None:
    result = explain(example, cert, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert decides in result.stdout
    assert result.stdout.splitlines()[-1] == verdict


def test_explain_an_anonymous_client(example: Path, tmp_path: Path) -> None:
    empty = tmp_path / "none.pem"
    empty.write_bytes(b"")
    result = cli("explain", "-c", example / "http-paths.yaml", "--cert", empty,
                 "--path", "/healthz")  # fmt: skip
    assert result.returncode == 0
    assert "ADMITTED (anonymous: client_auth.mode = request)" in result.stdout
    assert "client: anonymous" in result.stdout
    assert "rule health decides: the first whose methods and path match (exact /healthz)" in (
        result.stdout
    )
    refused = cli("explain", "-c", example / "http-paths.yaml", "--cert", empty,
                  "--path", "/api/x")  # fmt: skip
    assert refused.returncode == 1
    assert "requires a verified client certificate; an anonymous client sent it" in refused.stdout


def test_explain_the_allowed_identity_names_its_allow_rule(example: Path) -> None:
    result = explain(example, "client.crt", "--path", "/admin")
    assert f"allowed by spiffe_id: {FRONTEND}" in result.stdout


def test_method_needs_a_path(example: Path) -> None:
    result = explain(example, "client.crt", "--method", "GET")
    assert result.returncode == 2 and "--method needs --path" in result.stderr


def test_check_summarizes_the_rules(example: Path) -> None:
    result = cli("check", "-c", example / "http-paths.yaml")
    assert result.returncode == 0 and result.stderr == ""
    assert (
        "default (request) -> 127.0.0.1:8080 [http_authorization: 4 rules, default deny]"
        in result.stdout
    )


@pytest.fixture(scope="module")
def audit_example(example: Path) -> Path:
    """The example with its commented ``enforce: false`` line switched on."""
    text = (example / "http-paths.yaml").read_text()
    assert "      # enforce: false" in text
    audit = example / "http-paths-audit.yaml"
    audit.write_text(text.replace("      # enforce: false", "      enforce: false"))
    return audit


def test_explain_says_would_refuse_in_audit_mode(audit_example: Path, example: Path) -> None:
    result = cli("explain", "-c", audit_example, "--cert", example / "certs" / "client-other.crt",
                 "--path", "/admin/users")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        "ADMITTED in audit mode (http_authorization.enforce: false): would refuse (audit mode) "
        "with 403 Forbidden by rule admin (identity_not_allowed); the request is forwarded"
    )


def test_check_names_a_route_in_audit_mode(audit_example: Path) -> None:
    result = cli("check", "-c", audit_example)
    assert result.returncode == 0 and result.stderr == ""
    assert (
        "default (request) -> 127.0.0.1:8080 [http_authorization: 4 rules, default deny, "
        "audit mode (enforce: false)]" in result.stdout
    )
