"""``http_authorization`` in the config: parsed into ``PathAuthorization``, inherited by routes
(a route's replaces the listener's as a whole), every mistake named by line and key path, the
warnings ``check`` gives for rules that can never be met or are always met, and the schema
agreeing with the loader on the new shapes."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from mtlsproxy import pki
from mtlsproxy.config import load_config_with_warnings
from mtlsproxy.config.schema import json_schema
from mtlsproxy.policy.model import AllowKind, AllowRule
from mtlsproxy.policy.paths import PathAuthorization, PathMatch, PathRule, Requirement
from tests.config.test_load import problems, write
from tests.config.test_schema import loader_problems, schema_errors

FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("http_authorization")
    pki.init(directory / "certs")
    return directory


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema())


CONFIG = """
listeners:
  - name: web
    listen: 127.0.0.1:0
    tls:
      certificates:
        - {certificate: certs/server.crt, key: certs/server.key}
    client_auth:
      mode: request
      ca: certs/client-ca.pem
    upstream: 127.0.0.1:8080
    forward_identity: http
    http_authorization:
      rules:
        - name: admin
          prefix: /admin
          methods: [GET, POST, GET]
          require: verified
          allow:
            - spiffe_id: spiffe://example.org/ns/prod/sa/frontend
        - prefix: /api/
          require: verified
        - exact: /healthz
          require: any
      default: deny
    routes:
      - sni: inherits.example.org
      - sni: own.example.org
        http_authorization:
          rules: [{prefix: /, require: verified}]
      - sni: none.example.org
        http_authorization: {}
"""

LISTENER_RULES = PathAuthorization(
    rules=(
        PathRule(
            PathMatch.PREFIX, "/admin", Requirement.VERIFIED, methods=("GET", "POST"),
            allow=(AllowRule(AllowKind.SPIFFE_ID, FRONTEND),), name="admin",
        ),
        PathRule(PathMatch.PREFIX, "/api/", Requirement.VERIFIED),
        PathRule(PathMatch.EXACT, "/healthz", Requirement.ANY),
    ),
    default=Requirement.DENY,
)  # fmt: skip


def test_rules_are_parsed_and_inherited(base: Path) -> None:
    config, warnings = load_config_with_warnings(write(base, CONFIG))
    assert warnings == []
    (listener,) = config.listeners
    assert listener.default_route.http_authorization == LISTENER_RULES
    inherits, own, none = listener.routes
    assert inherits.http_authorization == LISTENER_RULES
    assert own.http_authorization == PathAuthorization(
        rules=(PathRule(PathMatch.PREFIX, "/", Requirement.VERIFIED),)
    )
    assert none.http_authorization == PathAuthorization()
    assert not none.http_authorization.active


def test_enforce_false_is_audit_mode_and_true_is_the_default(base: Path) -> None:
    text = rules("      enforce: false\n      rules: [{prefix: /a, require: deny}]\n")
    config, warnings = load_config_with_warnings(write(base, text))
    assert warnings == []
    authorization = config.listeners[0].default_route.http_authorization
    assert authorization.enforce is False and authorization.active
    assert LISTENER_RULES.enforce is True  # CONFIG says nothing: enforced


def rules(text: str, *, mode: str = "request", forward: str = "http") -> str:
    """CONFIG's listener with ``text`` as its http_authorization, no routes."""
    head = CONFIG.split("    http_authorization:")[0]
    head = head.replace("mode: request", f"mode: {mode}").replace(
        "forward_identity: http", f"forward_identity: {forward}"
    )
    if mode == "none":
        head = head.replace("      ca: certs/client-ca.pem\n", "")
    return head + "    http_authorization:\n" + text


@pytest.mark.parametrize(
    ("text", "key_path", "message"),
    [
        ("      rules: [{require: any}]", "rules[0]", "has neither prefix nor exact"),
        ("      rules: [{prefix: /a, exact: /a, require: any}]", "rules[0]",
         "has both prefix and exact"),
        ("      rules: [{prefix: /a}]", "rules[0].require", "is required"),
        ("      rules: [{prefix: /a, require: maybe}]", "rules[0].require", "is not one of"),
        ("      default: allow", "default", "is not one of any, verified, deny"),
        ("      rules: [{prefix: admin, require: any}]", "rules[0].prefix", "origin-form"),
        ("      rules: [{prefix: '/a/../b', require: any}]", "rules[0].prefix",
         "can never match: requests are refused when the path has a . or .. segment"),
        ("      rules: [{exact: '/a%2Fb', require: any}]", "rules[0].exact", "can never match"),
        ("      rules: [{exact: '/a?b=1', require: any}]", "rules[0].exact", "without the query"),
        ("      rules: [{prefix: /a, methods: [get], require: any}]", "rules[0].methods[0]",
         "methods are case-sensitive; write 'GET'"),
        ("      rules: [{prefix: /a, methods: ['G T'], require: any}]", "rules[0].methods[0]",
         "is not an HTTP method"),
        ("      rules: [{prefix: /a, methods: [], require: any}]", "rules[0].methods",
         "must not be empty"),
        ("      rules: [{prefix: /a, require: any, allow: [{dns: a.example.org}]}]",
         "rules[0].allow", "has no effect with require any"),
        ("      rules: [{prefix: /a, require: verified, allow: [{spiffe: x}]}]",
         "rules[0].allow[0].spiffe", "unknown key"),
        ("      rules: [{prefix: /a, require: verified, allow: [{uri: 'a/**/b'}]}]",
         "rules[0].allow[0].uri", "'**' is only allowed"),
        ("      rules: [{name: default, prefix: /a, require: any}]", "rules[0].name",
         "is the label of requests no rule decides"),
        ("      rules: [{name: '7', prefix: /a, require: any}]", "rules[0].name",
         "is not a number"),
        ("      rules: [{name: a, prefix: /a, require: any}, {name: a, prefix: /b, require: any}]",
         "rules[1].name", "rule 'a' is already used"),
        ("      rules: [{prefix: /a, require: any, priority: 1}]", "rules[0].priority",
         "unknown key"),
        ("      enforce: 'no'\n      rules: [{prefix: /a, require: deny}]", "enforce",
         "expected true or false"),
        ("      enforce: 0\n      rules: [{prefix: /a, require: deny}]", "enforce",
         "expected true or false"),
    ],
)  # fmt: skip
def test_mistakes_are_named(base: Path, text: str, key_path: str, message: str) -> None:
    found = problems(write(base, rules(text + "\n")))
    prefix = "listeners[0].http_authorization."
    assert any(path == prefix + key_path and message in text for _, path, text in found), found


def route_with(setting: str) -> str:
    """CONFIG with ``setting`` on the route that inherits the listener's rules."""
    route = "      - sni: inherits.example.org\n"
    return CONFIG.replace(route, f"{route}        {setting}\n")


def test_rules_need_http_mode(base: Path) -> None:
    text = rules("      rules: [{prefix: /a, require: any}]\n", forward="proxy_protocol_v2")
    ((_, path, message),) = problems(write(base, text))
    assert path == "listeners[0].http_authorization"
    assert "requests are read only with forward_identity mode http" in message


def test_a_route_inheriting_rules_without_http_mode_is_an_error(base: Path) -> None:
    text = route_with("forward_identity: none")
    ((_, path, message),) = problems(write(base, text))
    assert path == "listeners[0].routes[0].http_authorization"
    assert message.startswith("has no effect (from the listener)")


def warnings_of(base: Path, text: str) -> list[tuple[str, str]]:
    _, found = load_config_with_warnings(write(base, text))
    assert all(p.severity == "warning" for p in found)
    return [(p.key_path, p.message) for p in found]


def test_verified_rules_on_mode_none_can_never_be_met(base: Path) -> None:
    text = rules(
        "      rules: [{name: admin, prefix: /a, require: verified}, {prefix: /, require: any}]\n"
        "      default: verified\n",
        mode="none",
    )
    ((path, message),) = warnings_of(base, text)
    assert path == "listeners[0].http_authorization"
    assert message.startswith("rules[0] (admin), default require a verified client, but ")
    assert "use mode request" in message
    assert "so they refuse every request they decide" in message
    ((_, audit),) = warnings_of(
        base, text.replace("      rules:", "      enforce: false\n      rules:")
    )
    assert "so they would refuse every request they decide" in audit


def test_verified_without_allow_on_mode_require_is_redundant(base: Path) -> None:
    text = rules(
        "      rules:\n"
        f"        - {{prefix: /admin, require: verified, allow: [{{spiffe_id: '{FRONTEND}'}}]}}\n"
        "        - {prefix: /api, require: verified}\n",
        mode="require",
    )
    ((path, message),) = warnings_of(base, text)
    assert path == "listeners[0].http_authorization"
    assert message.startswith("rules[1] (1): require verified is always met")
    # In audit mode a client can be admitted unverified: the rule means something there.
    audit = text.replace("ca: certs/client-ca.pem", "ca: certs/client-ca.pem\n      enforce: false")
    assert all("always met" not in m for _, m in warnings_of(base, audit))


def test_a_route_with_its_own_policy_is_checked_with_the_inherited_rules(base: Path) -> None:
    text = route_with("client_auth: {mode: none}")
    ((path, message),) = warnings_of(base, text)
    assert path == "listeners[0].routes[0].http_authorization"
    assert "client_auth.mode is none" in message


@pytest.mark.parametrize(
    "text",
    [
        "      rules: [{prefix: /a}]",
        "      rules: [{require: any}]",
        "      rules: [{prefix: /a, exact: /b, require: any}]",
        "      rules: [{prefix: a, require: any}]",
        "      rules: [{exact: '/a?b', require: any}]",
        "      rules: [{prefix: /a, methods: [get], require: any}]",
        "      rules: [{prefix: /a, require: any, allow: [{dns: a.example.org}]}]",
        "      rules: [{name: default, prefix: /a, require: any}]",
        "      rules: [{name: 7, prefix: /a, require: any}]",
        "      rules: [{prefix: /a, require: any, priority: 1}]",
        "      default: allow",
        "      other: 1",
        "      enforce: 'no'",
    ],
)
def test_the_schema_refuses_these_shapes_too(
    base: Path,
    validator: jsonschema.Draft202012Validator,
    text: str,
) -> None:
    config = rules(text + "\n")
    assert loader_problems(base, config)
    assert schema_errors(validator, yaml.safe_load(config))


def test_the_schema_accepts_the_good_config(
    validator: jsonschema.Draft202012Validator,
) -> None:
    assert [e.message for e in schema_errors(validator, yaml.safe_load(CONFIG))] == []
    audit = CONFIG.replace(
        "\n    http_authorization:\n", "\n    http_authorization:\n      enforce: false\n", 1
    )
    assert [e.message for e in schema_errors(validator, yaml.safe_load(audit))] == []
