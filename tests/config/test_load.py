"""YAML -> Config: good configs become the expected dataclasses; every broken one names the
file, the line and the key path of what to fix."""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mtlsproxy import pki
from mtlsproxy.config import (
    CertificateKeyPair,
    Config,
    ConfigError,
    ConfigProblem,
    ForwardIdentity,
    Limits,
    Listener,
    LogFormat,
    LogSettings,
    MetricsSettings,
    Route,
    Timeouts,
    TLSSettings,
    TLSVersion,
    Upstream,
    load_config,
    load_config_with_warnings,
)
from mtlsproxy.config.load import MAX_CONFIG_BYTES
from mtlsproxy.config.model import Http2Settings, UpstreamProtocol
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode

EXAMPLES = Path(__file__).parents[2] / "config"
FINGERPRINT = "AB:" * 31 + "CD"


class Odd:
    """Certificates the standard PKI does not have, each beside the others in ``certs/``."""

    expired = "certs/expired.crt"  # server certificate, expired yesterday
    soon = "certs/soon.crt"  # server certificate, expires in three days
    server_key = "certs/server.key"  # the key of both
    weak_crt = "certs/weak.crt"  # RSA 1024
    weak_key = "certs/weak.key"
    encrypted_key = "certs/encrypted.key"
    not_a_ca = "certs/leaf-bundle.pem"  # the root CA, then a leaf, as a CA bundle
    forged_crl = "certs/forged.crl"  # names the root CA as issuer, signed by the rogue key
    der_crl = "certs/ca-der.crl"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``certs/`` (the development PKI plus the odd files above); each
    test writes its YAML next to it, so the configs name files as ``certs/...``."""
    directory = tmp_path_factory.mktemp("config")
    files = pki.init(directory / "certs")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    server_key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    now = datetime.now(UTC)

    def server(key: pki.PrivateKey, end: datetime) -> x509.Certificate:
        start = end - timedelta(days=30)
        return pki.issue_leaf(key, ca, ca_key, usage="server", not_before=start, not_after=end)

    pki.write_pem(directory / Odd.expired, server(server_key, now - timedelta(days=1)))
    pki.write_pem(directory / Odd.soon, server(server_key, now + timedelta(days=3, hours=1)))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pki.write_pem(directory / Odd.weak_crt, server(weak, now + timedelta(days=30)))
    pki.write_pem(directory / Odd.weak_key, weak)
    (directory / Odd.encrypted_key).write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (directory / Odd.not_a_ca).write_bytes(
        files.ca_cert.read_bytes() + files.client_cert.read_bytes()
    )
    rogue_key = serialization.load_pem_private_key(files.rogue_ca_key.read_bytes(), None)
    root = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    crl = pki.make_crl(root, rogue_key, [], next_update=now + timedelta(days=1))
    pki.write_pem(directory / Odd.forged_crl, crl)
    ca_crl = x509.load_pem_x509_crl(files.ca_crl.read_bytes())
    (directory / Odd.der_crl).write_bytes(ca_crl.public_bytes(serialization.Encoding.DER))
    return directory


def write(base: Path, text: str, name: str = "config.yaml") -> Path:
    path = base / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[tuple[int | None, str, str]]:
    """(line, key path, message) of each problem, in the order ConfigError holds them."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [(p.line, p.key_path, p.message) for p in caught.value.problems]


def only_problem(path: Path) -> tuple[int | None, str, str]:
    (problem,) = problems(path)
    return problem


GOOD = """
listeners:
  - name: api
    listen: "[::1]:0"
    tls:
      certificates:
        - {certificate: certs/server.crt, key: certs/server.key}
      min_version: 1.3
      alpn: [h2, http/1.1]
    client_auth:
      mode: require
      ca: certs/client-ca.pem
      crl: certs/ca.crl
      allow:
        - sha256: "<fingerprint>"
    upstream: unix:run/app.sock
    routes:
      - sni: [Public.Example.org, "*.public.example.org"]
        client_auth: {mode: none}
      - name: admin
        sni: admin.example.org
        client_auth:
          allow: [{spiffe_id: "spiffe://example.org/ns/ops/sa/admin"}, {dns: "*.ops.example.org"}]
        upstream: 127.0.0.1:9001
        tls: {min_version: "1.2"}
    timeouts: {handshake: 500ms, connect: 2, idle: 5m, drain: 1.5}
    limits: {max_connections: 100, buffer_size: 1MiB}
metrics: {listen: 0.0.0.0:9100, enabled: false}
log: {format: text, level: debug}
""".replace("<fingerprint>", FINGERPRINT)


def test_a_good_config_becomes_the_expected_dataclasses(base: Path) -> None:
    config = load_config(write(base, GOOD))
    certs = base / "certs"
    tls = TLSSettings(
        certificates=(CertificateKeyPair(certs / "server.crt", certs / "server.key"),),
        min_version=TLSVersion.TLS1_3,
        alpn=("h2", "http/1.1"),
    )
    mtls = ClientAuth(
        mode=ClientAuthMode.REQUIRE,
        ca=certs / "client-ca.pem",
        crl=certs / "ca.crl",
        allow=(AllowRule(AllowKind.SHA256, "ab" * 31 + "cd"),),
    )
    default = Route("default", (), tls, mtls, Upstream(unix_path=base / "run/app.sock"))
    public = Route(
        "public_example_org",
        ("public.example.org", "*.public.example.org"),
        tls,
        ClientAuth(),
        default.upstream,
    )
    admin_allow = (
        AllowRule(AllowKind.SPIFFE_ID, "spiffe://example.org/ns/ops/sa/admin"),
        AllowRule(AllowKind.DNS, "*.ops.example.org"),
    )
    admin = Route(
        "admin",
        ("admin.example.org",),
        TLSSettings(tls.certificates, TLSVersion.TLS1_2, tls.alpn),
        ClientAuth(ClientAuthMode.REQUIRE, mtls.ca, mtls.crl, admin_allow),
        Upstream(host="127.0.0.1", port=9001),
    )
    assert config == Config(
        source=base / "config.yaml",
        listeners=(
            Listener(
                name="api",
                host="::1",
                port=0,
                engine="native",
                default_route=default,
                routes=(public, admin),
                timeouts=Timeouts(handshake=0.5, connect=2.0, idle=300.0, drain=1.5),
                limits=Limits(max_connections=100, buffer_size=1024 * 1024),
            ),
        ),
        metrics=MetricsSettings(host="0.0.0.0", port=9100, enabled=False),
        log=LogSettings(format=LogFormat.TEXT, level="debug"),
    )


MINIMAL = """
listeners:
  - name: api
    listen: 127.0.0.1:8443
    tls: {certificates: [{certificate: certs/server.crt, key: certs/server.key}]}
    upstream: 127.0.0.1:8080
"""


def test_unset_keys_take_the_defaults(base: Path) -> None:
    config = load_config(write(base, MINIMAL))
    (listener,) = config.listeners
    assert (config.metrics, config.log) == (MetricsSettings(), LogSettings())
    assert (listener.engine, listener.timeouts, listener.limits) == (
        "native",
        Timeouts(),
        Limits(),
    )
    assert listener.default_route.client_auth == ClientAuth()
    assert listener.default_route.forward_identity.mode is ForwardIdentity.NONE
    assert listener.default_route.tls.min_version is TLSVersion.TLS1_2


def test_a_route_naming_only_the_mode_inherits_the_listener_ca(base: Path) -> None:
    config = load_config(
        write(
            base,
            MINIMAL
            + """\
    client_auth: {mode: request, ca: certs/client-ca.pem, crl: certs/ca.crl}
    routes:
      - {sni: a.example.org, client_auth: {mode: require}}
""",
        )
    )
    (route,) = config.listeners[0].routes
    certs = base / "certs"
    assert route.client_auth == ClientAuth(
        ClientAuthMode.REQUIRE, certs / "client-ca.pem", certs / "ca.crl"
    )


# Each case: YAML after the minimal listener's first four lines, then (line, key path, message).
LISTENER_HEAD = """
listeners:
  - name: api
    listen: 127.0.0.1:8443
    tls: {certificates: [{certificate: certs/server.crt, key: certs/server.key}]}
"""
BROKEN = {
    "typo": (
        "    upstream: 127.0.0.1:8080\n    clinet_auth: {mode: none}\n",
        (6, "listeners[0].clinet_auth", "unknown key 'clinet_auth'; did you mean 'client_auth'?"),
    ),
    "bad mode": (
        "    upstream: 127.0.0.1:8080\n    client_auth:\n      mode: requir\n",
        (
            7,
            "listeners[0].client_auth.mode",
            "'requir' is not one of none, request, require",
        ),
    ),
    "duplicate key": (
        "    upstream: 127.0.0.1:8080\n    upstream: 127.0.0.1:8081\n",
        (6, "listeners[0].upstream", "duplicate key (first at line 5)"),
    ),
    "missing ca": (
        "    upstream: 127.0.0.1:8080\n    client_auth: {mode: require}\n",
        (6, "listeners[0].client_auth.ca", "is required when mode is require"),
    ),
    "missing ca in a route": (
        "    upstream: 127.0.0.1:8080\n    routes:\n      - sni: a.example.org\n"
        "        client_auth: {mode: request}\n",
        (8, "listeners[0].routes[0].client_auth.ca", "is required when mode is request"),
    ),
    "allow without verification": (
        "    upstream: 127.0.0.1:8080\n    client_auth:\n      allow: [{subject_cn: x}]\n",
        (7, "listeners[0].client_auth.allow", "has no effect with mode none"),
    ),
    "bad duration": (
        "    upstream: 127.0.0.1:8080\n    timeouts: {idle: 10 minutes}\n",
        (
            6,
            "listeners[0].timeouts.idle",
            "'10 minutes' is not a duration like 500ms, 10s, 5m or 1h",
        ),
    ),
    "zero duration": (
        "    upstream: 127.0.0.1:8080\n    timeouts: {connect: 0s}\n",
        (6, "listeners[0].timeouts.connect", "'0s' must be a duration greater than zero"),
    ),
    "buffer too small": (
        "    upstream: 127.0.0.1:8080\n    limits: {buffer_size: 1KiB}\n",
        (6, "listeners[0].limits.buffer_size", "'1KiB' is not between 16KiB and 64MiB"),
    ),
    "bad upstream": (
        "    upstream: ::1:8080\n",
        (
            5,
            "listeners[0].upstream",
            "'::1:8080': write IPv6 addresses in brackets, like [::1]:8443",
        ),
    ),
    "upstream port 0": (
        "    upstream: 127.0.0.1:0\n",
        (5, "listeners[0].upstream", "port 0 is not in 1..65535"),
    ),
    "list for a mapping": (
        "    upstream: 127.0.0.1:8080\n    limits: [max_connections, 5]\n",
        (6, "listeners[0].limits", "expected a mapping, got a list"),
    ),
    "record padding out of range": (
        "    upstream: 127.0.0.1:8080\n    routes:\n      - sni: a.example.org\n"
        "        tls: {record_padding: 1}\n",
        (
            8,
            "listeners[0].routes[0].tls.record_padding",
            "1 is not 0 (no padding) or a block size from 2 to 16384",
        ),
    ),
    "unknown engine": (
        "    upstream: 127.0.0.1:8080\n    engine: boringssl\n",
        (6, "listeners[0].engine", "'boringssl' is not one of openssl, native"),
    ),
    "forward identity option of the other mode": (
        "    upstream: 127.0.0.1:8080\n    forward_identity: {mode: http, crc32c: true}\n",
        (6, "listeners[0].forward_identity.crc32c", "has no effect with mode http"),
    ),
    "unknown identity header field": (
        "    upstream: 127.0.0.1:8080\n"
        "    forward_identity: {mode: http, headers: {X-Client: password}}\n",
        (
            6,
            "listeners[0].forward_identity.headers.X-Client",
            "'password' is not one of verify, subject, sha256, spiffe_id, serial, cn, uri, dns",
        ),
    ),
    "unknown upstream protocol": (
        "    upstream: 127.0.0.1:8080\n    forward_identity: {mode: http, upstream_protocol: h3}\n",
        (
            6,
            "listeners[0].forward_identity.upstream_protocol",
            "'h3' is not one of http/1.1, h2c, auto, h2-to-http/1.1",
        ),
    ),
    "upstream protocol without http mode": (
        "    upstream: 127.0.0.1:8080\n"
        "    forward_identity: {mode: proxy_protocol_v2, upstream_protocol: h2c}\n",
        (
            6,
            "listeners[0].forward_identity.upstream_protocol",
            "has no effect with mode proxy_protocol_v2",
        ),
    ),
    "http2 stream limit out of range": (
        "    upstream: 127.0.0.1:8080\n"
        "    forward_identity: {mode: http, http2: {max_concurrent_streams: 0}}\n",
        (
            6,
            "listeners[0].forward_identity.http2.max_concurrent_streams",
            "0 is not between 1 and 10000",
        ),
    ),
    "http2 header list too small": (
        "    upstream: 127.0.0.1:8080\n"
        "    forward_identity: {mode: http, http2: {max_header_list_size: 100}}\n",
        (
            6,
            "listeners[0].forward_identity.http2.max_header_list_size",
            "100 is not between 1024 and 1048576 bytes",
        ),
    ),
    "bad fingerprint": (
        "    upstream: 127.0.0.1:8080\n    client_auth:\n      mode: require\n"
        "      ca: certs/client-ca.pem\n      allow:\n        - sha256: abc\n",
        (
            10,
            "listeners[0].client_auth.allow[0].sha256",
            "'abc' is not a SHA-256 fingerprint (64 hex digits, colons allowed)",
        ),
    ),
    "bad sni": (
        "    upstream: 127.0.0.1:8080\n    routes:\n      - sni: [ok.example.org, a.*.b]\n",
        (
            7,
            "listeners[0].routes[0].sni[1]",
            "'a.*.b' is not a host name or a wildcard like *.example.org",
        ),
    ),
    "sni claimed twice": (
        "    upstream: 127.0.0.1:8080\n    routes:\n      - {name: a, sni: x.example.org}\n"
        "      - {name: b, sni: X.example.org}\n",
        (
            8,
            "listeners[0].routes[1].sni",
            "SNI 'x.example.org' is already used by listeners[0].routes[0].sni (line 7)",
        ),
    ),
    "same address twice": (
        "    upstream: 127.0.0.1:8080\n  - name: two\n    listen: 127.0.0.1:8443\n"
        "    tls: {certificates: [{certificate: certs/server.crt, key: certs/server.key}]}\n"
        "    upstream: 127.0.0.1:8080\n",
        (
            7,
            "listeners[1].listen",
            "address 127.0.0.1:8443 is already used by listeners[0].listen (line 3)",
        ),
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_config_names_line_and_key(base: Path, case: str) -> None:
    tail, expected = BROKEN[case]
    assert only_problem(write(base, LISTENER_HEAD + tail)) == expected


def test_http2_settings_load_with_their_defaults(base: Path) -> None:
    tail = (
        "    upstream: 127.0.0.1:8080\n    forward_identity:\n      mode: http\n"
        "      upstream_protocol: auto\n      http2: {max_resets: 50, reset_interval: 2s}\n"
    )
    identity = load_config(write(base, LISTENER_HEAD + tail)).listeners[0].default_route
    forward = identity.forward_identity
    assert forward.upstream_protocol is UpstreamProtocol.AUTO
    assert forward.http2 == Http2Settings(max_resets=50, reset_interval=2.0)
    default = load_config(write(base, LISTENER_HEAD + "    upstream: 127.0.0.1:8080\n"))
    assert default.listeners[0].default_route.forward_identity.upstream_protocol is (
        UpstreamProtocol.HTTP1
    )


def test_a_missing_required_key_points_at_its_mapping(base: Path) -> None:
    assert only_problem(write(base, LISTENER_HEAD)) == (2, "listeners[0].upstream", "is required")


def test_a_yaml_syntax_error_is_one_problem_with_its_line(base: Path) -> None:
    path = write(base, "listeners:\n  - name: api\n   listen: x\n")
    (line, key_path, message) = only_problem(path)
    assert (line, key_path) == (3, "")
    assert message.startswith("invalid YAML: ")


def test_an_oversized_file_is_refused_unread(base: Path) -> None:
    path = base / "huge.yaml"
    path.write_text("#" * (MAX_CONFIG_BYTES + 1))
    assert only_problem(path) == (None, "", "the config is larger than 1 MiB")


def test_every_problem_is_reported_at_once_in_line_order(base: Path) -> None:
    path = write(
        base,
        """
        listeners:
          - name: API
            listen: nowhere
            tls: {certificates: [{certificate: certs/server.crt, key: certs/missing.key}]}
            upstream: 127.0.0.1:8080
            routes: [{sni: "*"}]
        log: {format: xml}
        """,
    )
    assert [(line, key) for line, key, _ in problems(path)] == [
        (2, "listeners[0].name"),
        (3, "listeners[0].listen"),
        (4, "listeners[0].tls.certificates[0].key"),
        (6, "listeners[0].routes[0].sni"),
        (7, "log.format"),
    ]


def test_problems_print_as_file_line_key_message() -> None:
    problem = ConfigProblem(Path("config.yaml"), 12, "listeners[0].client_auth.mode", "bad")
    assert str(problem) == "config.yaml:12: listeners[0].client_auth.mode: bad"
    warning = ConfigProblem(Path("c.yaml"), None, "", "soon", "warning")
    assert str(warning) == "c.yaml: warning: soon"


def key_pair_config(base: Path, certificate: str, key: str) -> Path:
    return write(
        base,
        f"""
        listeners:
          - name: api
            listen: 127.0.0.1:8443
            tls:
              certificates:
                - certificate: {certificate}
                  key: {key}
            upstream: 127.0.0.1:8080
        """,
    )


KEY_PAIR_LINE, KEY_PAIR_PATH = 7, "listeners[0].tls.certificates[0]"


@pytest.mark.parametrize(
    ("certificate", "key", "where", "message"),
    [
        ("certs/server.crt", "certs/client.key", "key", "the key does not match the certificate"),
        ("certs/absent.crt", "certs/server.key", "certificate", "cannot read"),
        ("certs/server.key", "certs/server.key", "certificate", "not a valid PEM certificate"),
        (Odd.expired, Odd.server_key, "certificate", "expired on"),
        (Odd.weak_crt, Odd.weak_key, "key", "the RSA key has 1024 bits; use 2048 or more"),
        ("certs/server.crt", Odd.encrypted_key, "key", "the key is encrypted"),
    ],
)
def test_bad_server_files_are_reported_at_the_key_naming_them(
    base: Path, certificate: str, key: str, where: str, message: str
) -> None:
    line, key_path, text = only_problem(key_pair_config(base, certificate, key))
    assert (line, key_path) == (
        KEY_PAIR_LINE - (where == "certificate"),
        f"{KEY_PAIR_PATH}.{where}",
    )
    assert message in text


def test_a_certificate_expiring_within_a_week_is_a_warning(base: Path) -> None:
    path = key_pair_config(base, Odd.soon, Odd.server_key)
    config, warnings = load_config_with_warnings(path)
    assert config == load_config(path)
    ((line, key_path, severity, message),) = [
        (w.line, w.key_path, w.severity, w.message) for w in warnings
    ]
    assert (line, key_path, severity) == (6, f"{KEY_PAIR_PATH}.certificate", "warning")
    assert "expires in 3 days" in message


def client_auth_config(base: Path, ca: str, crl: str) -> Path:
    return write(
        base,
        LISTENER_HEAD
        + f"""\
    upstream: 127.0.0.1:8080
    client_auth:
      mode: require
      ca: {ca}
      crl: {crl}
""",
    )


@pytest.mark.parametrize(
    ("ca", "crl", "line", "key", "message"),
    [
        (Odd.not_a_ca, "certs/ca.crl", 8, "ca", "CN=frontend in"),
        ("certs/client-ca.pem", Odd.forged_crl, 9, "crl", "is not signed by that CA's key"),
        ("certs/client-ca.pem", "certs/server.crt", 9, "crl", "is not a valid CRL"),
    ],
)
def test_bad_client_auth_files_are_reported(
    base: Path, ca: str, crl: str, line: int, key: str, message: str
) -> None:
    got_line, key_path, text = only_problem(client_auth_config(base, ca, crl))
    assert (got_line, key_path) == (line, f"listeners[0].client_auth.{key}")
    assert message in text


@pytest.mark.parametrize("crl", [Odd.der_crl, "certs/ca.crl"])
def test_crls_in_der_and_pem_are_accepted(base: Path, crl: str) -> None:
    assert load_config(client_auth_config(base, "certs/ca.crt", crl))


def test_a_crl_of_an_intermediate_outside_the_bundle_is_accepted(base: Path) -> None:
    # crls.pem holds the root's CRL and the intermediate's; the bundle trusts the root only:
    # the intermediate's CRL is checked against the intermediate each client sends.
    assert load_config(client_auth_config(base, "certs/ca.crt", "certs/crls.pem"))


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_the_example_configs_load(base: Path, example: str) -> None:
    path = base / example
    shutil.copy(EXAMPLES / example, path)
    config, warnings = load_config_with_warnings(path)
    assert config.listeners and not warnings


def test_there_are_examples_for_each_mode_and_for_routes() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= {
        "none.yaml",
        "request.yaml",
        "require.yaml",
        "routes.yaml",
    }


def test_a_stale_crl_is_an_error(base: Path, tmp_path: Path) -> None:
    files = pki.PkiFiles.at(base / "certs")
    root = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    root_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    now = datetime.now(UTC)
    stale = pki.make_crl(
        root,
        root_key,
        [],
        next_update=now - timedelta(hours=1),
        last_update=now - timedelta(days=2),
    )
    pki.write_pem(base / "certs" / "stale.crl", stale)
    _, key_path, message = only_problem(client_auth_config(base, "certs/ca.crt", "certs/stale.crl"))
    assert key_path == "listeners[0].client_auth.crl"
    assert "past its next update" in message


H2_TO_HTTP1 = (
    "\nlisteners:\n  - name: api\n    listen: 127.0.0.1:8443\n"
    "    tls:\n      certificates: [{certificate: certs/server.crt, key: certs/server.key}]\n"
    "      alpn: [h2, http/1.1]\n"
    "    upstream: 127.0.0.1:8080\n    forward_identity: {mode: http{protocol}}\n"
)


def test_h2_for_an_http1_upstream_is_refused_with_what_to_do(base: Path) -> None:
    line, key, message = only_problem(write(base, H2_TO_HTTP1.replace("{protocol}", "")))
    assert (line, key) == (5, "listeners[0].tls.alpn")
    assert "upstream_protocol to h2-to-http/1.1" in message
    assert "to auto or h2c" in message
    for protocol in ("auto", "h2-to-http/1.1"):
        fixed = H2_TO_HTTP1.replace("{protocol}", f", upstream_protocol: {protocol}")
        assert load_config(write(base, fixed)).listeners[0].default_route.tls.alpn == (
            "h2",
            "http/1.1",
        )
