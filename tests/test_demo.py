"""``mtlsproxy demo``, run as a real subprocess: once (the two exchanges, then exit), and serving
until SIGINT while curl goes through the printed command."""

from __future__ import annotations

import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mtlsproxy.demo import UPSTREAM_BODY, _free_port

DEMO = [sys.executable, "-m", "mtlsproxy", "demo", "--port", "0", "--metrics-port", "0"]
HANDSHAKE_OK = re.compile(r'^mtlsproxy_handshakes_total\{[^}]*result="ok"[^}]*\} 1\.0$')
HANDSHAKE_FAILED = re.compile(
    r'^mtlsproxy_handshakes_total\{[^}]*reason="client_cert_missing"[^}]*result="failed"'
    r'[^}]*step="client_certificate"[^}]*\} 1\.0$'
)


def test_free_port_zero_is_a_kernel_pick() -> None:
    port = _free_port(0)
    assert 0 < port < 65536


def _workdir(output: str) -> Path:
    match = re.search(r"a throwaway PKI and config in (\S+)", output)
    assert match, output
    return Path(match[1])


def test_demo_once_admits_with_a_certificate_and_refuses_without() -> None:
    result = subprocess.run([*DEMO, "--once"], capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert "Traceback" not in result.stderr + out, result.stderr
    assert result.returncode == 0, out + result.stderr
    assert "demo: the exchanges did not go as expected" not in result.stderr

    with_cert, _, rest = out.partition("2) A client WITHOUT a certificate")
    assert "1) A client WITH a certificate" in with_cert
    for step in ("seed 1 ", "seed 2 ", "seed 3 ", "seed 4 ", "seed 5 ", "seed 6 ", "seed 7-8"):
        assert f"   {step}" in with_cert, step
    assert re.search(r"result: ADMITTED: TLSv1\.3 \S+; the upstream answered: ", with_cert)
    assert UPSTREAM_BODY.decode().strip() in with_cert
    assert "seed 1-4 as above; seed 5:" in rest
    assert "result: REFUSED: " in rest
    assert "UNEXPECTEDLY" not in out

    metrics = [line.strip() for line in out.splitlines() if "mtlsproxy_handshakes_total" in line]
    assert any(HANDSHAKE_OK.match(line) for line in metrics), metrics
    assert any(HANDSHAKE_FAILED.match(line) for line in metrics), metrics

    proxy_port = re.search(r"client_auth\.mode=require\s+127\.0\.0\.1:(\d+)", out)
    metrics_port = re.search(r"metrics\s+http://127\.0\.0\.1:(\d+)/metrics", out)
    assert proxy_port and metrics_port
    assert int(proxy_port[1]) > 0 and int(metrics_port[1]) > 0  # port 0 became a real port

    workdir = _workdir(out)
    assert "Try it yourself:" in out
    assert (
        f"  curl --cacert {workdir}/ca.crt --cert {workdir}/client.crt "
        f"--key {workdir}/client.key https://localhost:{proxy_port[1]}/"
    ) in out
    assert f"  curl --cacert {workdir}/ca.crt https://localhost:{proxy_port[1]}/" in out
    assert f"  mtlsproxy explain -c {workdir}/mtlsproxy.yaml --cert " in out
    assert f"  curl http://127.0.0.1:{metrics_port[1]}/metrics" in out
    assert "Serving until Ctrl-C" not in out
    assert not workdir.exists()  # the throwaway PKI is removed


def _lines(stream, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def test_demo_serves_until_sigint() -> None:
    process = subprocess.Popen(
        DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not any("Serving until Ctrl-C" in line for line in output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("the demo never said it was serving:\n" + "".join(output))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the demo exited early ({process.wait()}):\n" + "".join(output))
            output.append(line)
        text = "".join(output)
        curls = [line.strip() for line in output if line.strip().startswith("curl ")]
        with_cert = next(c for c in curls if "--cert " in c)
        without_cert = next(c for c in curls if "--cert " not in c and "https://" in c)
        metrics_url = next(c for c in curls if "/metrics" in c).split()[-1]

        if shutil.which("curl"):
            answer = subprocess.run(
                [*shlex.split(with_cert), "-sS", "--max-time", "10"],
                capture_output=True,
                timeout=15,
            )
            assert answer.returncode == 0, answer.stderr
            assert answer.stdout == UPSTREAM_BODY
            refused = subprocess.run(
                [*shlex.split(without_cert.partition("#")[0]), "-sS", "--max-time", "10"],
                capture_output=True,
                timeout=15,
            )
            assert refused.returncode != 0
            assert UPSTREAM_BODY not in refused.stdout

        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            exposition = response.read().decode()
        assert 'mtlsproxy_handshakes_total{listener="demo"' in exposition
        workdir = _workdir(text)
        assert workdir.is_dir()

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    while (line := lines.get(timeout=10)) is not None:
        output.append(line)
    assert "Traceback" not in "".join(output), "".join(output)
    assert not workdir.exists()
