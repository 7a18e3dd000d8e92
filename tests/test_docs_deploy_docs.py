"""The documentation stays true to the code and to itself: docs/handshake.md names every step
and reason the code reports, the docs' links and anchors resolve, their PromQL parses and
names metrics that exist, the label values they and the deployment files use are the ones
the code emits, the `mtlsproxy explain` options they show exist, and nothing points outside
the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlsproxy.metrics import Metrics
from mtlsproxy.vocabulary.failures import Reason, Step
from tests.test_deploy import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    RULES,
    assert_ok,
    dashboard_expressions,
    markdown_anchors,
    run_tool,
    unknown_metrics,
)

DOCS = ROOT / "docs"
HANDSHAKE = DOCS / "handshake.md"
ROLLOUT = DOCS / "rollout.md"
RUNBOOK = DOCS / "runbook.md"
DEPLOY_README = DEPLOY / "README.md"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), DEPLOY_README]


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_handshake_doc_names_every_step_and_reason_of_the_code() -> None:
    doc = text(HANDSHAKE)
    for step in Step:
        assert f"`{step.value}`" in doc, step
    for reason in Reason:
        assert f"`{reason.value}`" in doc, reason
    # The seed numbering, once per step, in order.
    numbers = [int(n) for n in re.findall(r"^\| (\d) \| ", doc, flags=re.MULTILINE)]
    assert numbers == list(range(1, 10))
    for mode in ("none", "request", "require"):
        assert f"| `{mode}` |" in doc, mode


def test_handshake_doc_covers_the_policy_and_both_tls_versions() -> None:
    anchors = markdown_anchors(text(HANDSHAKE))
    assert {"the-policy-mode-by-mode", "tls-12-and-tls-13", "audit-mode-enforce-false"} <= anchors
    doc = text(HANDSHAKE)
    assert "certificate_required" in doc and "access_denied" in doc and "close_notify" in doc


LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file or anchor does not exist."""
    broken = []
    for target in LINK.findall(text(path)):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        missing_anchor = (
            resolved.exists()
            and bool(anchor)
            and resolved.suffix == ".md"
            and anchor not in markdown_anchors(text(resolved))
        )
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_links_check_catches_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](#title) [b](#nothing) [c](missing.md) [d](https://x.org)\n")
    assert broken_links(page) == ["#nothing", "missing.md"]


# The design notes the project was specified from are not shipped: nothing a user reads or
# runs may send them there (what they need is in docs/handshake.md and docs/architecture.md).
OUTSIDE_THE_REPOSITORY = re.compile(r"\bshared/|\bDESIGN\.md")


def test_nothing_points_outside_the_repository() -> None:
    package = Path(__file__).resolve().parents[1] / "mtlsproxy"
    files = [
        *MARKDOWN,
        *(p for p in DEPLOY.rglob("*") if p.is_file()),
        *package.rglob("*.py"),
    ]
    pointing = [str(path) for path in files if OUTSIDE_THE_REPOSITORY.search(text(path))]
    assert pointing == []


def promql_queries(path: Path) -> list[str]:
    """The queries of a Markdown file's ```promql blocks (a blank line separates two)."""
    blocks = re.findall(r"```promql\n(.*?)```", text(path), flags=re.DOTALL)
    return [q.strip() for block in blocks for q in re.split(r"\n\s*\n", block) if q.strip()]


def test_docs_promql_names_existing_metrics(promtool: str, tmp_path: Path) -> None:
    """Each PromQL block of the docs is a valid query (promtool, as a recording rule) on
    metrics the proxy exports."""
    queries = [q for path in (ROLLOUT, RUNBOOK, DEPLOY_README) for q in promql_queries(path)]
    assert len(queries) >= 7
    assert unknown_metrics(queries) == set()
    records = [{"record": f"docs:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "docs-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": records}]}), "utf-8")
    assert_ok(run_tool(promtool, "check", "rules", str(path)))


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def handshake_results() -> set[str]:
    """The `result` values of mtlsproxy_handshakes_total, from the metric's own help text."""
    (family,) = [f for f in Metrics().registry.collect() if f.name == "mtlsproxy_handshakes"]
    (listed,) = re.findall(r"by result \(([^)]*)\)", family.documentation)
    return {value.strip() for value in listed.split(",")}


def test_result_values_used_are_those_the_code_emits() -> None:
    results = handshake_results()
    assert results == {"ok", "failed", "refused", "would_refuse"}
    sources = [text(RULES), *dashboard_expressions(), text(ROLLOUT), text(RUNBOOK)]
    used = set()
    for source in sources:
        for value in re.findall(r'result=~?\\?"([^"\\]+)\\?"', source):
            used.update(value.split("|"))
    assert "would_refuse" in used and used <= results, used - results
    assert 'result="would_refuse"' in json_dashboard_text()


def json_dashboard_text() -> str:
    return text(DASHBOARD).replace('\\"', '"')


def test_explain_options_in_the_docs_exist() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtlsproxy", "explain", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path in (HANDSHAKE, ROLLOUT):
        commands = re.findall(r"^ *mtlsproxy explain (.+)$", text(path), flags=re.MULTILINE)
        assert commands, path
        for command in commands:
            for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", command):
                assert re.search(rf"(?<![\w-]){option}\b", result.stdout), (path, option)
