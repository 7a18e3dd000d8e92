"""Command line: ``run``, ``check``, ``explain``, ``demo``, ``pki init``, ``tickets generate``,
``schema``, ``version``.

Exit status: 0 success, 1 a runtime failure (the demo's exchanges did not go as expected),
2 a config or usage error (argparse uses 2 as well).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from mtlsproxy import __version__, pki
from mtlsproxy.config import (
    Config,
    ConfigError,
    ConfigProblem,
    ForwardIdentity,
    Route,
    UpstreamProtocol,
    load_config_with_warnings,
)
from mtlsproxy.engine import engine_build

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlsproxy", description="Mutual-TLS sidecar proxy with its own handshake engine."
    )
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(metavar="COMMAND")

    run = commands.add_parser("run", help="serve with a config file")
    run.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    run.set_defaults(handler=_run)

    # Started by the supervisor (workers > 1), one per worker; not for direct use.
    worker = commands.add_parser("worker")
    worker.add_argument("-c", "--config", type=Path, required=True)
    worker.set_defaults(handler=_worker)

    check = commands.add_parser(
        "check", help="validate a config and every file it names; exit 2 on problems"
    )
    check.add_argument("-c", "--config", type=Path, required=True)
    check.set_defaults(handler=_check)

    explain = commands.add_parser(
        "explain", help="say step by step what the proxy would do with a client certificate"
    )
    explain.add_argument("-c", "--config", type=Path, required=True)
    explain.add_argument("--cert", type=Path, required=True, help="client chain, PEM, leaf first")
    explain.add_argument("--sni", help="server name the client would send (selects the route)")
    explain.add_argument("--listener", help="listener name (default: the first)")
    explain.add_argument(
        "--path",
        help="a request-target the client would send (/admin?x=1): say which "
        "http_authorization rule decides",
    )
    explain.add_argument("--method", help="with --path: the request's method (default GET)")
    explain.set_defaults(handler=_explain)

    demo = commands.add_parser(
        "demo", help="run a throwaway PKI, upstream and proxy in require mode, and show it work"
    )
    demo.add_argument("--port", type=int, default=8443, help="proxy port (default 8443)")
    demo.add_argument("--metrics-port", type=int, default=9100)
    demo.add_argument("--dir", type=Path, help="keep the demo's PKI and config here")
    demo.add_argument("--once", action="store_true", help="exit after the two exchanges")
    demo.set_defaults(handler=_demo)

    pki_command = commands.add_parser("pki", help="development PKI")
    pki_commands = pki_command.add_subparsers(metavar="ACTION")
    init = pki_commands.add_parser("init", help="write a development CA, server and clients")
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help="server name or IP for the server certificates (repeatable; "
        "default localhost, 127.0.0.1, ::1)",
    )
    init.add_argument(
        "--force", action="store_true", help="replace a CA already in DIRECTORY (and all it signed)"
    )
    init.set_defaults(handler=_pki_init)

    tickets = commands.add_parser("tickets", help="session ticket keys (engine native)")
    tickets_commands = tickets.add_subparsers(metavar="ACTION")
    generate = tickets_commands.add_parser(
        "generate",
        help="print a new key, one line of a tls.session_tickets.keys file (put it first to "
        "rotate: it then seals new tickets)",
    )
    generate.set_defaults(handler=_tickets_generate)

    schema = commands.add_parser(
        "schema", help="print the config's JSON Schema (for editors; config/ ships it)"
    )
    schema.set_defaults(handler=_schema)

    version = commands.add_parser("version", help="print versions")
    version.set_defaults(handler=_version)
    return parser


def _load(path: Path) -> Config | None:
    """Load and validate; print every problem (and warning) to stderr."""
    try:
        config, warnings = load_config_with_warnings(path)
    except ConfigError as error:
        _print_problems(error.problems)
        return None
    _print_problems(warnings)
    return config


def _print_problems(problems: Sequence[ConfigProblem]) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if config.workers > 1:
        from mtlsproxy import supervisor

        try:
            supervisor.run(config)
        except OSError as error:  # the metrics port in use
            print(f"mtlsproxy: cannot serve: {error}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_OK
    from mtlsproxy import metric_updates

    metric_updates.install_loop_values()  # one process, one event-loop thread: no locks
    return _serve(config, worker=False)


def _worker(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from mtlsproxy import worker_metrics

    # Before the proxy makes its metrics, in the directory the supervisor named.
    if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        worker_metrics.install(Path(directory))
    return _serve(config, worker=True)


def _serve(config: Config, worker: bool) -> int:
    from mtlsproxy.proxy.server import run

    try:
        run(config, worker=worker)
    except OSError as error:  # a port in use, a unix socket path that cannot be created
        print(f"mtlsproxy: cannot serve: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        print(f"{args.config}: invalid", file=sys.stderr)
        return EXIT_CONFIG
    for listener in config.listeners:
        routes = [listener.default_route, *listener.routes]
        summary = ", ".join(
            f"{route.name} ({route.client_auth.mode}) -> {route.upstream}"
            f"{_http2(route)}{_paths(route)}"
            for route in routes
        )
        print(
            f"listener {listener.name} on {listener.host}:{listener.port} "
            f"(engine {listener.engine}): {summary}"
        )
    print(f"{args.config}: ok")
    return EXIT_OK


def _http2(route: Route) -> str:
    """Which clients an HTTP-mode route serves over HTTP/2 (none by default)."""
    identity = route.forward_identity
    if identity.mode is not ForwardIdentity.HTTP:
        return ""
    if identity.upstream_protocol is UpstreamProtocol.H2C:
        return " [HTTP/2 -> h2c]"
    if identity.upstream_protocol is UpstreamProtocol.AUTO:
        return " [HTTP/2 -> h2c, HTTP/1.1 -> HTTP/1.1]"
    if identity.upstream_protocol is UpstreamProtocol.H2_TO_HTTP1:
        return " [HTTP/2 -> HTTP/1.1 (a connection per stream), HTTP/1.1 -> HTTP/1.1]"
    return ""


def _paths(route: Route) -> str:
    authorization = route.http_authorization
    if not authorization.active:
        return ""
    count = len(authorization.rules)
    rules = f"{count} rule{'s' if count != 1 else ''}"
    audit = "" if authorization.enforce else ", audit mode (enforce: false)"
    return f" [http_authorization: {rules}, default {authorization.default}{audit}]"


def _explain(args: argparse.Namespace) -> int:
    from mtlsproxy.config.model import EngineKind
    from mtlsproxy.policy.explain import explain, explain_request
    from mtlsproxy.routing.routes import RouteTable

    if args.method is not None and args.path is None:
        print("--method needs --path", file=sys.stderr)
        return EXIT_CONFIG
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    listeners = {listener.name: listener for listener in config.listeners}
    if args.listener is not None and args.listener not in listeners:
        print(f"no listener named {args.listener!r}; have {', '.join(listeners)}", file=sys.stderr)
        return EXIT_CONFIG
    listener = listeners[args.listener] if args.listener else config.listeners[0]
    # The proxy lowercases the ClientHello's server_name before choosing a route; do the same.
    server_name = args.sni.lower() if args.sni else None
    route = RouteTable.for_listener(listener).select_name(server_name).config
    try:
        chain_pem = args.cert.read_bytes()
    except OSError as error:
        print(f"{args.cert}: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    sni = f"SNI {args.sni!r}" if args.sni else "no SNI"
    print(f"listener {listener.name}, {sni}: route {route.name!r}")
    explanation = explain(
        route,
        chain_pem,
        datetime.now(UTC),
        verifies_in_handshake=listener.engine is EngineKind.OPENSSL,
    )
    if args.path is not None:
        explanation = explain_request(
            explanation, route.http_authorization, args.method or "GET", args.path
        )
    for line in explanation.lines:
        print(line)
    return EXIT_OK if explanation.admitted else EXIT_FAILURE


def _demo(args: argparse.Namespace) -> int:
    from mtlsproxy.demo import run_demo

    return run_demo(args.port, args.metrics_port, args.dir, once=args.once)


def _pki_init(args: argparse.Namespace) -> int:
    hosts = tuple(args.hosts) if args.hosts else ("localhost", "127.0.0.1", "::1")
    existing = args.directory / "ca.crt"
    if existing.exists() and not args.force:
        print(
            f"{existing} exists: a new CA would invalidate every certificate the old one "
            "signed; pass --force to replace it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        files = pki.init(args.directory, hosts=hosts)
    except OSError as error:
        print(f"{args.directory}: cannot write the PKI: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"development PKI written to {files.directory} (never use these keys in production):")
    for name in sorted(path.name for path in files.directory.iterdir()):
        print(f"  {name}")
    return EXIT_OK


def _tickets_generate(args: argparse.Namespace) -> int:
    from mtlsproxy.engine.native.tickets import format_ticket_keys, new_ticket_key

    sys.stdout.buffer.write(format_ticket_keys([new_ticket_key()]))
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from mtlsproxy.config.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def _version_line() -> str:
    python, build = sys.version.split()[0], engine_build()
    return f"mtlsproxy {__version__} (engine: {build}), {ssl.OPENSSL_VERSION}, Python {python}"


def _version(args: argparse.Namespace) -> int:
    print(_version_line())
    return EXIT_OK
