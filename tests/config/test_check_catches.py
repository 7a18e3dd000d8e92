"""``check`` catches what ``run`` would trip on: overlapping binds, a CRL file missing a CA's
CRL, a server certificate clients refuse, settings that do nothing, one typo reported once,
and hints where a rule does not say what its author meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlsproxy.config import ConfigError, load_config_with_warnings
from mtlsproxy.pki import init, make_ca, new_key, write_pem

HEAD = """\
listeners:
  - name: api
    listen: 127.0.0.1:18443
    tls:
      certificates:
        - {certificate: certs/server.crt, key: certs/server.key}
    upstream: 127.0.0.1:8080
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("check")
    init(directory / "certs")
    return directory


def load(base: Path, text: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) as ``check`` prints them, without the file name."""
    path = base / "config.yaml"
    path.write_text(text)
    try:
        _, problems = load_config_with_warnings(path)
    except ConfigError as error:
        problems = list(error.problems)
    errors = [str(p).split(": ", 1)[1] for p in problems if p.severity == "error"]
    warnings = [str(p).split(": ", 1)[1] for p in problems if p.severity == "warning"]
    return errors, warnings


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "[::]"])
def test_a_wildcard_and_a_specific_address_on_one_port_overlap(base: Path, wildcard: str) -> None:
    second = HEAD.split("\n", 1)[1].replace("name: api", "name: other")
    second = second.replace("127.0.0.1:18443", f'"{wildcard}:18443"')
    errors, _ = load(base, HEAD + second)
    assert len(errors) == 1
    assert "listeners[1].listen: address" in errors[0] and "overlaps listeners[0]" in errors[0]


def test_the_same_port_on_two_specific_addresses_is_fine(base: Path) -> None:
    second = HEAD.split("\n", 1)[1].replace("name: api", "name: other")
    second = second.replace("127.0.0.1:18443", "127.0.0.2:18443")
    assert load(base, HEAD + second) == ([], [])


def test_a_crl_file_without_a_crl_of_a_configured_ca_is_a_warning(base: Path) -> None:
    text = HEAD + (
        "    client_auth: {mode: require, ca: certs/client-ca.pem, crl: certs/intermediate.crl}\n"
    )
    errors, warnings = load(base, text)
    assert errors == []
    (warning,) = warnings
    assert "holds no CRL of CN=mtlsproxy development root CA" in warning
    assert "every client certificate it issued is refused" in warning


def test_a_server_certificate_without_server_auth_is_an_error(base: Path) -> None:
    text = HEAD.replace("server.crt", "client.crt").replace("server.key", "client.key")
    errors, _ = load(base, text)
    (error,) = errors
    assert "tls.certificates[0].certificate" in error and "without serverAuth" in error


@pytest.mark.parametrize(
    "key", ["ca: certs/client-ca.pem", "crl: certs/crls.pem", "enforce: false"]
)
def test_client_auth_keys_under_mode_none_are_errors(base: Path, key: str) -> None:
    errors, _ = load(base, HEAD + f"    client_auth: {{mode: none, {key}}}\n")
    (error,) = errors
    assert f"client_auth.{key.split(':')[0]}: has no effect with mode none" in error


def test_a_typo_in_the_listener_mode_is_reported_once(base: Path) -> None:
    text = HEAD + (
        "    client_auth: {mode: requir, ca: certs/client-ca.pem}\n"
        "    routes:\n"
        "      - sni: a.example.org\n"
        "        client_auth: {allow: [{subject_cn: a}]}\n"
        "      - sni: b.example.org\n"
        "        client_auth: {crl: certs/crls.pem}\n"
    )
    errors, _ = load(base, text)
    assert len(errors) == 1, errors
    assert "'requir' is not one of none, request, require" in errors[0]


def test_a_trailing_single_star_on_a_spiffe_rule_hints_at_double_star(base: Path) -> None:
    text = HEAD + (
        "    client_auth:\n"
        "      mode: require\n"
        "      ca: certs/client-ca.pem\n"
        "      allow: [{spiffe_id: 'spiffe://example.org/ns/prod/*'}]\n"
    )
    errors, warnings = load(base, text)
    assert errors == []
    (warning,) = warnings
    assert "spiffe://example.org/ns/prod/** matches any depth" in warning


@pytest.mark.parametrize(("engine", "warned"), [("openssl", True), ("native", False)])
def test_audit_mode_on_openssl_says_what_it_cannot_admit(
    base: Path, engine: str, warned: bool
) -> None:
    text = HEAD.replace("    upstream:", f"    engine: {engine}\n    upstream:") + (
        "    client_auth: {mode: require, ca: certs/client-ca.pem, enforce: false}\n"
    )
    errors, warnings = load(base, text)
    assert errors == []
    assert bool(warnings) is warned
    if warned:
        assert "a certificate that fails verification" in warnings[0]
        assert "engine: native" in warnings[0]


@pytest.mark.parametrize("key", ["shutdown_delay", "lingering"])
def test_delays_may_be_zero_but_not_negative(base: Path, key: str) -> None:
    zero = HEAD + f"    timeouts: {{{key}: 0s}}\n"
    assert load(base, zero) == ([], [])
    (error,) = load(base, HEAD + f"    timeouts: {{{key}: -1}}\n")[0]
    assert f"timeouts.{key}" in error and "zero or more" in error


@pytest.mark.parametrize(
    "pattern",
    [
        "spiffe://example.org/ns//frontend",  # an empty segment
        "spiffe://example.org/ns/../admin",  # a dot segment
        "spiffe://example.org/ns/%61dmin",  # percent-encoding
        "spiffe://Example.org/ns/a",  # the trust domain is lowercase
    ],
)
def test_an_invalid_spiffe_pattern_is_refused_at_load(base: Path, pattern: str) -> None:
    text = HEAD + (
        "    client_auth:\n"
        "      mode: require\n"
        "      ca: certs/client-ca.pem\n"
        f"      allow: [{{spiffe_id: '{pattern}'}}]\n"
    )
    (error,) = load(base, text)[0]
    assert "client_auth.allow[0].spiffe_id" in error


@pytest.mark.parametrize(("engine", "refused"), [("native", True), ("openssl", False)])
def test_a_ca_the_native_verifier_cannot_use_is_an_error_on_native(
    base: Path, engine: str, refused: bool
) -> None:
    key = new_key("ed25519")
    write_pem(base / "certs" / "ed-ca.pem", make_ca("Ed25519 CA", key))
    text = HEAD.replace("    upstream:", f"    engine: {engine}\n    upstream:") + (
        "    client_auth: {mode: require, ca: certs/ed-ca.pem}\n"
    )
    errors, _ = load(base, text)
    if refused:
        (error,) = errors
        assert "Ed25519" in error and "engine: native" in error
    else:
        assert errors == []
