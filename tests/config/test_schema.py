"""The config's JSON Schema: shipped as generated, every example and good config valid against
it, and agreeing with the loader, asked black-box, on keys, enum values and the shapes it
refuses."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mtlsproxy import pki
from mtlsproxy.config import ConfigError, load_config
from mtlsproxy.config.schema import (
    REGENERATE,
    SCHEMA_FILE,
    json_schema,
    schema_text,
)
from mtlsproxy.engine.native.tickets import format_ticket_keys, new_ticket_key
from tests.config.test_load import GOOD

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=./mtlsproxy.schema.json"
FINGERPRINT = "AB:" * 31 + "CD"
UNKNOWN = "zzzzzz"  # close to no key, so the loader lists every key it accepts

# Well-formed, with every section; the cases below change one thing in it.
BASE = f"""
listeners:
  - name: api
    listen: 127.0.0.1:8443
    engine: openssl
    tls:
      certificates:
        - {{certificate: certs/server.crt, key: certs/server.key}}
      min_version: "1.3"
      alpn: [http/1.1]
      record_padding: 0
      session_tickets: {{keys: certs/ticket.keys, max_age: 24h}}
    client_auth:
      mode: require
      ca: certs/client-ca.pem
      crl: certs/crls.pem
      allow:
        - spiffe_id: spiffe://example.org/ns/prod/sa/frontend
        - sha256: "{FINGERPRINT}"
      enforce: true
    upstream: 127.0.0.1:8080
    forward_identity:
      mode: http
      xfcc: [by, hash]
      headers: {{X-SSL-Client-Verify: verify}}
    routes:
      - sni: admin.example.org
        upstream: 127.0.0.1:8081
    timeouts: {{handshake: 10s, idle: 5m}}
    limits: {{max_connections: 100, buffer_size: 256KiB}}
metrics: {{listen: 127.0.0.1:9100, enabled: true}}
log: {{format: json, level: info, access: true}}
reload: {{watch: true, interval: 5s}}
workers: 1
"""


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the development PKI in ``certs/``, as BASE names it."""
    directory = tmp_path_factory.mktemp("schema")
    pki.init(directory / "certs")
    (directory / "certs" / "ticket.keys").write_bytes(format_ticket_keys([new_ticket_key()]))
    return directory


def loader_problems(base: Path, text: str) -> list[tuple[str, str]]:
    """(key path, message) of each error the loader reports for ``text``."""
    path = base / "config.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as error:
        return [(p.key_path, p.message) for p in error.problems if p.severity == "error"]
    return []


def schema_errors(
    validator: jsonschema.Draft202012Validator, instance: Any
) -> list[jsonschema.ValidationError]:
    """Every error, those inside oneOf/anyOf/allOf branches too."""

    def walk(errors: Any) -> Iterator[jsonschema.ValidationError]:
        for error in errors:
            yield error
            yield from walk(error.context or ())

    return list(walk(validator.iter_errors(instance)))


def json_path(key_path: str) -> list[str | int]:
    """``listeners[0].tls.min_version`` -> ``["listeners", 0, "tls", "min_version"]``."""
    return [int(i) if i else key for key, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key_path)]


# --- the shipped file -----------------------------------------------------------------


def test_the_shipped_schema_is_the_generated_one() -> None:
    shipped = (REPO / SCHEMA_FILE).read_text()
    assert shipped == schema_text(), f"{SCHEMA_FILE} is stale; regenerate it: {REGENERATE}"


def test_mtlsproxy_schema_prints_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtlsproxy", "schema"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / SCHEMA_FILE).read_text()
    assert json.loads(result.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid_and_names_the_schema(
    validator: jsonschema.Draft202012Validator, example: Path
) -> None:
    text = example.read_text()
    assert text.splitlines()[0] == MODELINE
    assert [e.message for e in schema_errors(validator, yaml.safe_load(text))] == []


def test_the_good_config_of_the_loader_tests_is_valid(
    validator: jsonschema.Draft202012Validator,
) -> None:
    assert [e.message for e in validator.iter_errors(yaml.safe_load(GOOD))] == []


def test_the_base_of_these_tests_loads_and_is_valid(
    base: Path, validator: jsonschema.Draft202012Validator
) -> None:
    assert loader_problems(base, BASE) == []
    assert [e.message for e in validator.iter_errors(yaml.safe_load(BASE))] == []


def test_the_readme_reference_is_valid(validator: jsonschema.Draft202012Validator) -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Configuration reference\s*```yaml\n(.*?)```", readme, re.DOTALL)
    assert block is not None
    assert [e.message for e in validator.iter_errors(yaml.safe_load(block[1]))] == []


# --- what editors rely on -------------------------------------------------------------


def subschemas(schema: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        yield where, schema
        for key, value in schema.items():
            yield from subschemas(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from subschemas(value, f"{where}/{i}")


def test_every_property_has_a_description() -> None:
    undescribed = [
        f"{where}/properties/{key}"
        for where, schema in subschemas(json_schema())
        if schema.get("type") == "object" and isinstance(schema.get("properties"), dict)
        for key, value in schema["properties"].items()
        if value is not False and not value.get("description")
    ]
    assert undescribed == []


def test_every_mapping_refuses_unknown_keys() -> None:
    """Editors flag typos: every object with properties has additionalProperties false."""
    open_objects = [
        where
        for where, schema in subschemas(json_schema())
        if schema.get("type") == "object"
        and "properties" in schema
        and schema.get("additionalProperties") is not False
    ]
    assert open_objects == []


def test_every_default_is_valid_for_its_property() -> None:
    schema = json_schema()
    checked = 0
    for where, subschema in subschemas(schema):
        if "default" in subschema and not where.endswith("/properties"):
            alone = {**subschema, "$defs": schema["$defs"]}
            jsonschema.validate(subschema["default"], alone, jsonschema.Draft202012Validator)
            checked += 1
    assert checked >= 15


# --- agreement with the loader ---------------------------------------------------------

# (case, old text in BASE, new text, the loader's key path, its message, or "" when both
# must accept it)
CASES = [
    ("unknown_key", "client_auth:", "clinet_auth:", "listeners[0].clinet_auth", "unknown key"),
    ("unknown_top_key", "metrics:", "metric:", "metric", "unknown key"),
    ("bad_mode", "mode: require", "mode: requir", "listeners[0].client_auth.mode",
     "is not one of"),
    ("bad_engine", "engine: openssl", "engine: boringssl", "listeners[0].engine",
     "is not one of"),
    ("bad_duration", "idle: 5m", "idle: 5 minutes", "listeners[0].timeouts.idle",
     "is not a duration"),
    ("zero_duration", "idle: 5m", "idle: 0s", "listeners[0].timeouts.idle", "greater than zero"),
    ("negative_duration", "idle: 5m", "idle: -1", "listeners[0].timeouts.idle",
     "greater than zero"),
    ("bad_interval", "interval: 5s", "interval: soon", "reload.interval", "is not a duration"),
    ("bad_allow_kind", "- spiffe_id:", "- spiffe:", "listeners[0].client_auth.allow[0].spiffe",
     "unknown key"),
    ("two_kinds_in_one_rule", "- sha256:", "- dns: a.example.org\n          sha256:",
     "listeners[0].client_auth.allow[1]", "one key"),
    ("not_a_spiffe_id", "spiffe_id: spiffe://", "spiffe_id: https://",
     "listeners[0].client_auth.allow[0].spiffe_id", "SPIFFE ID"),
    ("short_fingerprint", f'sha256: "{FINGERPRINT}"', 'sha256: "abcd"',
     "listeners[0].client_auth.allow[1].sha256", "SHA-256"),
    ("missing_listeners", "listeners:", "listners:", "listeners", "is required"),
    ("no_listeners", "listeners:\n", "listeners: []\nunused:\n", "listeners", "must not be empty"),
    ("missing_upstream", "upstream: 127.0.0.1:8080", "", "listeners[0].upstream", "is required"),
    ("missing_certificates", "certificates:", "certs:", "listeners[0].tls.certificates",
     "is required"),
    ("route_without_sni", "- sni: admin.example.org", "- name: admin",
     "listeners[0].routes[0].sni", "is required"),
    ("bad_sni", "sni: admin.example.org", "sni: -admin.example.org",
     "listeners[0].routes[0].sni", "not a host name"),
    ("bad_label", "name: api", "name: API", "listeners[0].name", "must be 1 to 32"),
    ("address_without_port", "listen: 127.0.0.1:8443", "listen: localhost",
     "listeners[0].listen", "is not host:port"),
    ("port_out_of_range", "listen: 127.0.0.1:8443", "listen: 127.0.0.1:65536",
     "listeners[0].listen", "not in 0..65535"),
    ("ipv6_without_brackets", "listen: 127.0.0.1:8443", 'listen: "::1:8443"',
     "listeners[0].listen", "in brackets"),
    ("upstream_port_0", "upstream: 127.0.0.1:8080", "upstream: 127.0.0.1:0",
     "listeners[0].upstream", "not in 1..65535"),
    ("bad_size", "buffer_size: 256KiB", "buffer_size: 256KB", "listeners[0].limits.buffer_size",
     "not a size"),
    ("small_buffer", "buffer_size: 256KiB", "buffer_size: 1024",
     "listeners[0].limits.buffer_size", "between 16KiB and 64MiB"),
    ("no_connections", "max_connections: 100", "max_connections: 0",
     "listeners[0].limits.max_connections", "at least 1"),
    ("no_workers", "workers: 1", "workers: 0", "workers", "at least 1"),
    ("too_many_workers", "workers: 1", "workers: 257", "workers", "more than 256"),
    ("bad_padding", "record_padding: 0", "record_padding: 1", "listeners[0].tls.record_padding",
     "block size"),
    ("bad_min_version", 'min_version: "1.3"', 'min_version: "1.1"',
     "listeners[0].tls.min_version", "is not one of"),
    ("bad_xfcc_field", "xfcc: [by, hash]", "xfcc: [by, hsah]",
     "listeners[0].forward_identity.xfcc[1]", "is not one of"),
    ("bad_header_field", "X-SSL-Client-Verify: verify", "X-SSL-Client-Verify: verified",
     "listeners[0].forward_identity.headers.X-SSL-Client-Verify", "is not one of"),
    ("bad_header_name", "X-SSL-Client-Verify: verify", '"X SSL": verify',
     "listeners[0].forward_identity.headers.X SSL", "not a valid header name"),
    ("crc32c_with_http", "xfcc: [by, hash]", "crc32c: true",
     "listeners[0].forward_identity.crc32c", "no effect with mode http"),
    ("xfcc_with_pp2", "mode: http", "mode: proxy_protocol_v2",
     "listeners[0].forward_identity.xfcc", "no effect with mode proxy_protocol_v2"),
    ("bad_forward_mode", "mode: http", "mode: xfcc", "listeners[0].forward_identity.mode",
     "is not one of"),
    ("forward_options_without_mode", "      mode: http\n", "",
     "listeners[0].forward_identity.mode", "is required"),
    ("ca_with_mode_none", "mode: require", "mode: none", "listeners[0].client_auth.ca",
     "no effect with mode none"),
    ("ca_without_mode", "      mode: require\n", "", "listeners[0].client_auth.ca",
     "no effect with mode none"),
    ("require_without_ca", "      ca: certs/client-ca.pem\n      crl: certs/crls.pem\n", "",
     "listeners[0].client_auth.ca", "is required when mode is require"),
    ("route_allow_with_mode_none", "upstream: 127.0.0.1:8081",
     "client_auth: {mode: none, allow: [{dns: a.example.org}]}",
     "listeners[0].routes[0].client_auth.allow", "no effect with mode none"),
    ("bad_log_level", "level: info", "level: verbose", "log.level", "is not one of"),
    ("bad_log_format", "format: json", "format: logfmt", "log.format", "is not one of"),
    ("bad_boolean", "enforce: true", "enforce: yes please", "listeners[0].client_auth.enforce",
     "true or false"),
    ("alpn_not_a_list", "alpn: [http/1.1]", "alpn: http/1.1", "listeners[0].tls.alpn",
     "expected a list"),
    ("ticket_age_over_7_days", "max_age: 24h", "max_age: 604801",
     "listeners[0].tls.session_tickets.max_age", "more than 7 days"),
    ("zero_ticket_age", "max_age: 24h", "max_age: 0s",
     "listeners[0].tls.session_tickets.max_age", "greater than zero"),
    ("bad_ticket_age", "max_age: 24h", "max_age: a day",
     "listeners[0].tls.session_tickets.max_age", "is not a duration"),
    ("ticket_keys_not_a_path", "keys: certs/ticket.keys", "keys: [a, b]",
     "listeners[0].tls.session_tickets.keys", "expected a string"),
    # accepted by both
    ("duration_in_ms", "idle: 5m", "idle: 500 ms", "", ""),
    ("duration_as_seconds", "idle: 5m", "idle: 1.5", "", ""),
    ("size_in_bytes", "buffer_size: 256KiB", "buffer_size: 65536", "", ""),
    ("size_in_mib", "buffer_size: 256KiB", "buffer_size: 64MiB", "", ""),
    ("ipv6_listen", "listen: 127.0.0.1:8443", 'listen: "[::1]:0"', "", ""),
    ("highest_port", "listen: 127.0.0.1:8443", "listen: localhost:65535", "", ""),
    ("unix_upstream", "upstream: 127.0.0.1:8080", "upstream: unix:run/app.sock", "", ""),
    ("sni_list_any_case", "sni: admin.example.org", 'sni: [Admin.Example.org, "*.a.example.org"]',
     "", ""),
    ("fingerprint_any_case_no_colons", f'sha256: "{FINGERPRINT}"', f'sha256: "{"Ab" * 32}"',
     "", ""),
    ("numeric_name", "name: api", "name: 443", "", ""),
    ("unquoted_min_version", 'min_version: "1.3"', "min_version: 1.2", "", ""),
    ("workers_auto", "workers: 1", "workers: auto", "", ""),
    ("ticket_age_7_days", "max_age: 24h", "max_age: 168h", "", ""),
    ("route_ticket_age", "upstream: 127.0.0.1:8081",
     "tls: {session_tickets: {max_age: 30m}}", "", ""),
    ("padding_block", "record_padding: 0", "record_padding: 16384", "", ""),
    ("forward_mode_alone", "forward_identity:\n", "forward_identity: proxy_protocol_v2\n"
     "    unused:\n", "", ""),
    ("route_overrides", "upstream: 127.0.0.1:8081",
     "client_auth: {mode: request, allow: [{subject_cn: frontend}]}\n"
     "        tls: {min_version: '1.2'}\n        forward_identity: none", "", ""),
]  # fmt: skip


def case_text(old: str, new: str) -> str:
    assert BASE.count(old) >= 1, old
    text = BASE.replace(old, new, 1)
    # Mapping lines a case emptied ("unused:" above) go, with what they held.
    lines, skip = [], None
    for line in text.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        if skip is not None and indent > skip:
            continue
        skip = indent if line.strip() == "unused:" else None
        if skip is None:
            lines.append(line)
    return "".join(lines)


@pytest.mark.parametrize(
    ("old", "new", "key_path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_schema_refuses_what_the_loader_refuses_for_its_shape(
    base: Path,
    validator: jsonschema.Draft202012Validator,
    old: str,
    new: str,
    key_path: str,
    message: str,
) -> None:
    text = case_text(old, new)
    problems = loader_problems(base, text)
    errors = schema_errors(validator, yaml.safe_load(text))
    if not message:
        assert problems == []
        assert [e.message for e in errors] == []
        return
    assert any(path == key_path and message in text for path, text in problems), problems
    # The schema objects at the same place or at the mapping holding it.
    where = json_path(key_path)
    assert any(list(e.absolute_path) == where[: len(e.absolute_path)] for e in errors), [
        (list(e.absolute_path), e.message) for e in errors
    ]
    assert errors


# Each mapping the loader reads, as a path into BASE's data (created when BASE lacks it).
SECTIONS = [
    "",
    "listeners[0]",
    "listeners[0].tls",
    "listeners[0].tls.certificates[0]",
    "listeners[0].tls.session_tickets",
    "listeners[0].client_auth",
    "listeners[0].client_auth.allow[0]",
    "listeners[0].forward_identity",
    "listeners[0].routes[0]",
    "listeners[0].routes[0].tls",
    "listeners[0].routes[0].client_auth",
    "listeners[0].routes[0].forward_identity",
    "listeners[0].timeouts",
    "listeners[0].limits",
    "metrics",
    "log",
    "reload",
]


def with_unknown_key(key_path: str) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(BASE))
    node = data
    for step in json_path(key_path):
        if isinstance(step, str) and step not in node:
            node[step] = {"mode": "http"} if step == "forward_identity" else {}
        node = node[step]
    if key_path.endswith("allow[0]"):
        node.clear()  # a rule has one key
    node[UNKNOWN] = "x"
    return data


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s or "top")
def test_each_mapping_has_the_keys_the_loader_accepts(
    base: Path, validator: jsonschema.Draft202012Validator, section: str
) -> None:
    data = with_unknown_key(section)
    problems = dict(loader_problems(base, yaml.safe_dump(data, sort_keys=False)))
    unknown = problems[f"{section}.{UNKNOWN}" if section else UNKNOWN]
    loader_keys = set(re.fullmatch(rf"unknown key '{UNKNOWN}'; expected one of (.*)", unknown)[1]
                      .split(", "))  # fmt: skip
    (refusal,) = [
        e
        for e in schema_errors(validator, data)
        if e.validator == "additionalProperties"
        and list(e.absolute_path) == json_path(section)
        and UNKNOWN in e.message
    ]
    schema_keys = set(refusal.schema["properties"])
    assert schema_keys == loader_keys


# (key path, a value no enum has) for every value the loader takes from a fixed list.
ENUMS = [
    "listeners[0].engine",
    "listeners[0].tls.min_version",
    "listeners[0].client_auth.mode",
    "listeners[0].forward_identity",
    "listeners[0].forward_identity.mode",
    "listeners[0].forward_identity.xfcc[0]",
    "listeners[0].forward_identity.headers.X-SSL-Client-Verify",
    "log.format",
    "log.level",
]


@pytest.mark.parametrize("key_path", ENUMS)
def test_each_enum_has_the_values_the_loader_accepts(
    base: Path, validator: jsonschema.Draft202012Validator, key_path: str
) -> None:
    data = yaml.safe_load(BASE)
    *parents, last = json_path(key_path)
    node = data
    for step in parents:
        node = node[step]
    node[last] = UNKNOWN
    problems = dict(loader_problems(base, yaml.safe_dump(data, sort_keys=False)))
    match = re.fullmatch(rf"'{UNKNOWN}' is not one of (.*)", problems[key_path])
    assert match is not None, problems[key_path]
    (refusal,) = [
        e
        for e in schema_errors(validator, data)
        if e.validator == "enum" and list(e.absolute_path) == json_path(key_path)
    ]
    # min_version also lists the numbers an unquoted 1.2 or 1.3 is read as
    schema_values = [v for v in refusal.validator_value if isinstance(v, str)]
    assert schema_values == match[1].split(", ")
