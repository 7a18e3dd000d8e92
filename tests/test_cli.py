"""The ``mtlsproxy`` command line, run as a real subprocess: ``pki init``, ``check``, ``run``
(with a config it must refuse), ``explain`` and ``version``.

Every run goes through ``cli``, which also asserts that nothing ever prints a traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy import __version__, pki
from mtlsproxy.engine import engine_build

EXAMPLES = Path(__file__).resolve().parent.parent / "config"
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"


def cli(
    *args: str | Path, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run ``python -m mtlsproxy ARGS``; never a traceback, on either stream."""
    result = subprocess.run(
        [sys.executable, "-m", "mtlsproxy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    return result


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle`` in ``text``."""
    return text[: text.index(needle)].count("\n") + 1


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example configs, copied next to a fresh development PKI in ``certs/``."""
    directory = tmp_path_factory.mktemp("examples")
    for name in EXAMPLE_NAMES:
        shutil.copy(EXAMPLES / name, directory / name)
    pki.init(directory / "certs")
    return directory


def variant(examples: Path, name: str, text: str) -> Path:
    """A config next to the examples (so ``certs/...`` resolves) holding ``text``."""
    path = examples / name
    path.write_text(text)
    return path


# --- pki init ---------------------------------------------------------------------------


def test_pki_init_writes_the_files_with_private_keys_0600(tmp_path: Path) -> None:
    target = tmp_path / "dev-pki"
    result = cli("pki", "init", target)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in target.iterdir())
    for name in (
        "ca.crt",
        "client-ca.pem",
        "crls.pem",
        "ca.crl",
        "server.crt",
        "server.key",
        "server-rsa.crt",
        "server-rsa.key",
        "client.crt",
        "client.key",
        "client-intermediate.crt",
    ):
        assert name in written
    listed = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert listed == written
    assert "never use these keys in production" in result.stdout
    for path in target.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path.name
        else:
            assert mode == 0o644, path.name


def test_pki_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    assert cli("pki", "init", tmp_path).returncode == 0
    ca = (tmp_path / "ca.crt").read_bytes()
    result = cli("pki", "init", tmp_path)
    assert result.returncode == 2 and "--force" in result.stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert cli("pki", "init", tmp_path, "--force").returncode == 0
    assert (tmp_path / "ca.crt").read_bytes() != ca


def test_pki_init_into_a_file_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = cli("pki", "init", blocker)
    assert result.returncode == 1
    assert f"{blocker}: cannot write the PKI" in result.stderr


# --- check: the examples ----------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_check_accepts_each_example(examples: Path, name: str) -> None:
    config = examples / name
    result = cli("check", "-c", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    listeners = yaml.safe_load(config.read_text())["listeners"]
    assert len(lines) == len(listeners) + 1
    for line, listener in zip(lines, listeners, strict=False):
        engine = listener.get("engine", "native")
        assert line.startswith(
            f"listener {listener['name']} on {listener['listen']} (engine {engine}): default ("
        )
        mode = listener.get("client_auth", {}).get("mode", "none")
        assert f"default ({mode}) -> {listener['upstream']}" in line
        for route in listener.get("routes", []):
            assert f"({route.get('client_auth', {}).get('mode', mode)})" in line
    assert lines[-1] == f"{config}: ok"


@pytest.mark.parametrize(
    ("example", "summary"),
    [
        (
            "routes.yaml",
            "listener edge on 127.0.0.1:8443 (engine native): default (require) -> "
            "127.0.0.1:8080, public_example_org (none) -> 127.0.0.1:8080, admin (require) -> "
            "127.0.0.1:8081",
        ),
        (  # which clients an HTTP-mode route serves over HTTP/2
            "grpc.yaml",
            "default (require) -> 127.0.0.1:50051 [HTTP/2 -> h2c, HTTP/1.1 -> HTTP/1.1] "
            "[http_authorization: 3 rules, default deny]",
        ),
    ],
)
def test_check_summarizes_each_route(examples: Path, example: str, summary: str) -> None:
    result = cli("check", "-c", examples / example)
    assert result.returncode == 0, result.stderr
    assert summary in result.stdout


# --- check: broken configs ----------------------------------------------------------------


def _expired_server_certificate(certs: Path) -> tuple[str, str]:
    """Mint an expired server certificate (and its key) issued by the dev root CA."""
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    key = pki.new_key()
    now = datetime.now(UTC)
    cert = pki.issue_leaf(
        key,
        ca,
        ca_key,  # type: ignore[arg-type]
        common_name="localhost",
        dns_names=["localhost"],
        usage="server",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    pki.write_pem(certs / "expired-server.crt", cert)
    pki.write_pem(certs / "expired-server.key", key)
    return "certs/expired-server.crt", "certs/expired-server.key"


# (case, old text in require.yaml, new text, key path, cause)
BROKEN = [
    (
        "typo_key",
        "client_auth:",
        "clinet_auth:",
        "listeners[0].clinet_auth",
        "unknown key 'clinet_auth'; did you mean 'client_auth'?",
    ),
    (
        "bad_mode",
        "mode: require",
        "mode: requir",
        "listeners[0].client_auth.mode",
        "'requir' is not one of none, request, require",
    ),
    (
        "missing_ca",
        "ca: certs/client-ca.pem",
        "ca: certs/no-such-ca.pem",
        "listeners[0].client_auth.ca",
        "no-such-ca.pem: No such file or directory",
    ),
    (
        "key_mismatch",
        "key: certs/server.key",
        "key: certs/client.key",
        "listeners[0].tls.certificates[0].key",
        "the key does not match the certificate",
    ),
    (
        "expired_server_certificate",
        "{certificate: certs/server.crt, key: certs/server.key}",
        None,  # minted in the test
        "listeners[0].tls.certificates[0].certificate",
        "the certificate CN=localhost expired on",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "key_path", "cause"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_check_names_file_line_key_and_cause(
    examples: Path, old: str, new: str | None, key_path: str, cause: str
) -> None:
    if new is None:
        cert, key = _expired_server_certificate(examples / "certs")
        new = f"{{certificate: {cert}, key: {key}}}"
    original = (examples / "require.yaml").read_text()
    assert old in original
    text = original.replace(old, new, 1)
    config = variant(examples, f"broken-{key_path.replace('.', '-')}.yaml", text)
    result = cli("check", "-c", config)
    assert result.returncode == 2
    assert result.stdout == ""
    line = line_of(text, new)
    problem = next(p for p in result.stderr.splitlines() if p.startswith(f"{config}:{line}:"))
    assert problem.startswith(f"{config}:{line}: {key_path}: ")
    assert cause in problem
    assert result.stderr.splitlines()[-1] == f"{config}: invalid"


def test_check_reports_a_yaml_syntax_error_with_its_line(examples: Path) -> None:
    config = variant(examples, "syntax.yaml", "listeners:\n  - name: api\n    listen: [unclosed\n")
    result = cli("check", "-c", config)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{config}:")
    first = result.stderr.splitlines()[0]
    assert "invalid YAML" in first
    assert first.split(":")[1].isdigit()  # file:line:


def _several_problems(examples: Path) -> tuple[Path, list[str]]:
    text = (
        (examples / "require.yaml")
        .read_text()
        .replace("key: certs/server.key", "key: certs/client.key")
        .replace('min_version: "1.3"', 'min_version: "1.4"')
        .replace("ca: certs/client-ca.pem", "ca: certs/no-such-ca.pem")
        .replace("forward_identity:", "forward_identiy:")
    )
    expected = [
        f"{line_of(text, 'certs/client.key')}: listeners[0].tls.certificates[0].key: "
        "the key does not match the certificate",
        f"{line_of(text, '1.4')}: listeners[0].tls.min_version: '1.4' is not one of 1.2, 1.3",
        f"{line_of(text, 'no-such-ca')}: listeners[0].client_auth.ca: cannot read",
        f"{line_of(text, 'forward_identiy')}: listeners[0].forward_identiy: unknown key "
        "'forward_identiy'; did you mean 'forward_identity'?",
    ]
    return variant(examples, "several.yaml", text), expected


def test_check_reports_every_problem_in_one_run(examples: Path) -> None:
    config, expected = _several_problems(examples)
    result = cli("check", "-c", config)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    for want in expected:
        assert any(line.startswith(f"{config}:{want}") for line in lines), (want, lines)
    # In file order, each once.
    problem_lines = [int(line.split(":")[1]) for line in lines[:-1]]
    assert problem_lines == sorted(problem_lines)
    assert len(problem_lines) == len(expected)


def test_run_refuses_a_broken_config_without_serving(examples: Path) -> None:
    config, expected = _several_problems(examples)
    result = cli("run", "-c", config, timeout=20)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    for want in expected:
        assert any(line.startswith(f"{config}:{want}") for line in lines), (want, lines)
    assert "listening" not in result.stderr


def test_run_reports_a_port_in_use_without_a_traceback(examples: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = (
            (examples / "none.yaml")
            .read_text()
            .replace("listen: 127.0.0.1:8443", f"listen: 127.0.0.1:{port}")
            .replace("listen: 127.0.0.1:9100", "listen: 127.0.0.1:0")
        )
        result = cli("run", "-c", variant(examples, "port-taken.yaml", text), timeout=20)
    assert result.returncode == 1
    assert "cannot serve" in result.stderr
    assert "in use" in result.stderr


# --- explain --------------------------------------------------------------------------------


def explain(examples: Path, cert: str | Path, *extra: str, config: str = "require.yaml"):
    return cli("explain", "-c", examples / config, "--cert", examples / "certs" / cert, *extra)


def test_explain_admits_the_allowed_client(examples: Path) -> None:
    result = explain(examples, "client.crt")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("listener api, no SNI: route 'default'\n")
    for step in ("seed step 2:", "seed step 5:", "seed step 6:", "seed steps 7-9:"):
        assert step in out
    assert "CertificateRequest (client_auth.mode = require)" in out
    assert f"the client presents CN=frontend ({FRONTEND}), 1 certificate" in out
    crl = re.search(r"crl: certs/(\S+)", (examples / "require.yaml").read_text())
    assert crl, "the require example names a CRL"
    assert f"\nnot revoked (CRL {crl[1]}, next update" in out
    assert f"authorize: allowed by rule spiffe_id: {FRONTEND}" in out
    assert out.splitlines()[-1] == "ADMITTED"


def test_explain_refuses_a_client_outside_the_allow_list(examples: Path) -> None:
    result = explain(examples, "client-other.crt")
    assert result.returncode == 1
    out = result.stdout
    assert "authorize: refused: no allow rule matches" in out
    assert "CN=intruder" in out
    for rule in (f"spiffe_id: {FRONTEND}", "dns: *.internal.example.org", "subject_cn: frontend"):
        assert f"  rule {rule}" in out
    assert out.splitlines()[-1] == "REFUSED at step authorize (identity_not_allowed)"


@pytest.mark.parametrize(
    ("cert", "reason", "detail"),
    [
        ("client-expired.crt", "client_cert_expired", "expired on"),
        ("client-notyet.crt", "client_cert_not_yet_valid", "not valid before"),
        ("client-revoked.crt", "client_cert_revoked", "was revoked on"),
        ("client-wrong-eku.crt", "client_cert_bad_usage", "does not include clientAuth"),
        ("client-untrusted.crt", "client_cert_untrusted", "no chain to the client CA bundle"),
    ],
)
def test_explain_refuses_at_verification(
    examples: Path, cert: str, reason: str, detail: str
) -> None:
    result = explain(examples, cert)
    assert result.returncode == 1
    assert "seed step 6: verification fails:" in result.stdout
    assert detail in result.stdout
    assert result.stdout.splitlines()[-1] == f"REFUSED at step client_verify ({reason})"
    assert "ADMITTED" not in result.stdout


def with_crl(examples: Path, crl: str) -> str:
    """The require example reading its CRLs from ``certs/{crl}``, by config file name."""
    text = (examples / "require.yaml").read_text()
    text, count = re.subn(r"crl: certs/\S+", f"crl: certs/{crl}", text)
    assert count == 1
    return variant(examples, f"require-{crl}.yaml", text).name


@pytest.mark.parametrize("crl", ["ca.crl", "crls.pem"])
def test_explain_refuses_the_revoked_client(examples: Path, crl: str) -> None:
    result = explain(examples, "client-revoked.crt", config=with_crl(examples, crl))
    assert result.returncode == 1
    assert "was revoked on" in result.stdout
    assert f"by {crl}" in result.stdout
    assert result.stdout.splitlines()[-1] == "REFUSED at step client_verify (client_cert_revoked)"


def test_explain_refuses_a_client_whose_issuer_has_no_crl(examples: Path) -> None:
    """CRL checks fail closed, as in the handshake: ca.crl covers the root's children only."""
    result = explain(examples, "client-intermediate.crt", config=with_crl(examples, "ca.crl"))
    assert result.returncode == 1
    assert "CRL checks fail closed" in result.stdout
    assert result.stdout.splitlines()[-1] == (
        "REFUSED at step client_verify (client_cert_untrusted)"
    )


def test_explain_admits_a_client_sending_its_intermediate(examples: Path) -> None:
    crl = "crls.pem"  # the root's CRL and the intermediate's
    result = explain(examples, "client-intermediate.crt", config=with_crl(examples, crl))
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "2 certificates" in out
    assert "mtlsproxy development client intermediate CA <- CN=mtlsproxy development root" in out
    intermediate = "CN=mtlsproxy development client intermediate CA"
    assert f"{intermediate}: not revoked (CRL {crl}, next update" in out
    assert f"\nnot revoked (CRL {crl}" in out
    assert "revocation not checked" not in out
    assert out.splitlines()[-1] == "ADMITTED"


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (os.urandom(64) + b"\x00garbage", "no '-----BEGIN CERTIFICATE-----' block"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", "Unable"),
        (None, "no '-----BEGIN CERTIFICATE-----' block"),  # a private key, not a certificate
    ],
    ids=["garbage", "broken_pem", "private_key"],
)
def test_explain_refuses_unparsable_input_clearly(
    examples: Path, tmp_path: Path, content: bytes | None, cause: str
) -> None:
    path = tmp_path / "input.pem"
    if content is None:
        shutil.copy(examples / "certs" / "client.key", path)
    else:
        path.write_bytes(content)
    result = explain(examples, path)
    assert result.returncode == 1
    assert f"seed step 5: the input holds no parsable PEM certificate ({cause}" in result.stdout
    assert "https://" not in result.stdout
    assert result.stdout.splitlines()[-1] == "REFUSED at step client_verify (client_cert_invalid)"


def test_explain_an_empty_file_is_no_certificate(examples: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    result = explain(examples, empty)
    assert result.returncode == 1
    assert "empty Certificate message" in result.stdout
    assert "(client_cert_missing)" in result.stdout
    anonymous = explain(examples, empty, config="request.yaml")
    assert anonymous.returncode == 0
    assert "ADMITTED (anonymous: client_auth.mode = request)" in anonymous.stdout


def test_explain_a_missing_certificate_file(examples: Path) -> None:
    result = explain(examples, "no-such.crt")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        result.stderr.strip() == f"{examples / 'certs' / 'no-such.crt'}: No such file or directory"
    )


def test_explain_with_a_broken_config(examples: Path) -> None:
    config, _ = _several_problems(examples)
    result = explain(examples, "client.crt", config=config.name)
    assert result.returncode == 2
    assert "listeners[0].tls.min_version" in result.stderr


@pytest.mark.parametrize(
    ("sni", "route", "code", "verdict"),
    [
        (
            "public.example.org",
            "public_example_org",
            0,
            "ADMITTED (anonymous: client_auth.mode = none)",
        ),
        (
            "PUBLIC.example.org",
            "public_example_org",
            0,
            "ADMITTED (anonymous: client_auth.mode = none)",
        ),
        ("admin.example.org", "admin", 1, "REFUSED at step authorize (identity_not_allowed)"),
        ("x.admin.example.org", "admin", 1, "REFUSED at step authorize (identity_not_allowed)"),
        ("elsewhere.example.org", "default", 0, "ADMITTED"),
        (None, "default", 0, "ADMITTED"),
    ],
)
def test_explain_sni_selects_the_route(
    examples: Path, sni: str | None, route: str, code: int, verdict: str
) -> None:
    extra = ("--sni", sni) if sni else ()
    result = explain(examples, "client-other.crt", *extra, config="routes.yaml")
    assert result.returncode == code, result.stdout
    shown = f"SNI {sni!r}" if sni else "no SNI"
    assert result.stdout.startswith(f"listener edge, {shown}: route '{route}'\n")
    assert result.stdout.splitlines()[-1] == verdict
    if route == "public_example_org":
        assert "sends no CertificateRequest" in result.stdout
        assert "seed step 6" not in result.stdout
    if route == "default":
        assert "authorize: no allow-list, every verified client is admitted" in result.stdout


def test_explain_listener_by_name(examples: Path) -> None:
    result = explain(examples, "client.crt", "--listener", "edge", config="routes.yaml")
    assert result.returncode == 0
    assert result.stdout.startswith("listener edge, no SNI: route 'default'")
    unknown = explain(examples, "client.crt", "--listener", "nope", config="routes.yaml")
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    assert "no listener named 'nope'; have edge" in unknown.stderr


# --- version, usage ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("version",), ("--version",)], ids=str)
def test_version_prints_the_versions(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 0
    assert result.stdout.startswith(f"mtlsproxy {__version__} (engine: {engine_build()}), ")
    assert ssl.OPENSSL_VERSION in result.stdout
    assert f"Python {sys.version.split()[0]}" in result.stdout


def test_workers_with_the_metrics_port_busy_is_a_clean_message(tmp_path: Path) -> None:
    """The supervisor binds the metrics port: busy, it says so in one line (exit 1)."""
    pki.init(tmp_path / "certs")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (EXAMPLES / "require.yaml").read_text()
        text = re.sub(
            r"(?m)^metrics:\n  listen: .*$", f'metrics:\n  listen: "127.0.0.1:{port}"', text
        )
        config = tmp_path / "workers.yaml"
        config.write_text("workers: 2\n" + text)
        result = cli("run", "-c", config, cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot serve" in result.stderr and "in use" in result.stderr


@pytest.mark.parametrize("args", [(), ("pki",), ("nonsense",), ("check",)], ids=str)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "usage: mtlsproxy" in result.stdout + result.stderr


def test_check_says_an_h2_to_http1_route_translates(examples: Path) -> None:
    """``upstream_protocol: h2-to-http/1.1`` is accepted, and ``check`` says what it serves."""
    text = (examples / "grpc.yaml").read_text()
    assert "upstream_protocol: auto" in text
    translated = text.replace("upstream_protocol: auto", "upstream_protocol: h2-to-http/1.1")
    result = cli("check", "-c", variant(examples, "h2-to-h1.yaml", translated))
    assert result.returncode == 0, result.stderr
    assert "[HTTP/2 -> HTTP/1.1 (a connection per stream), HTTP/1.1 -> HTTP/1.1]" in result.stdout
