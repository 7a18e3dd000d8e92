"""Where a server's CPU goes per new connection, natively: ``perf`` samples by shared object.

callgrind counts instructions, and that hides what matters here: a P-256 or X25519 routine in
assembly retires several instructions a cycle, the interpreter's pointer chasing far fewer. So
an instruction share is not a time share. This samples the server's own threads with the
kernel's ``cpu-clock`` event (no hardware counters needed, so it works in a VM) while
``e2e.py``'s handshake clients load it, and sorts the samples by the object they fell in:

* ``python``: libpython (the interpreter, object allocation, attribute and dict lookups,
  calls), whoever called it: interpreted modules and the compiled ones alike;
* ``compiled``: the project's mypyc extension (``mtlsproxy_compiled__mypyc``);
* ``crypto``: cryptography's bundled OpenSSL and the system libcrypto/libssl (nginx's TLS);
* ``kernel``: system calls, TCP on loopback, scheduling;
* ``libc``: malloc, memcpy...; ``event loop``: uvloop/libuv; ``nginx``: its own code;
* ``other``: everything else (``_hashlib``, ``_struct``...).

With ``--layers`` (the proxy's systems only) perf also records call graphs (DWARF unwinding:
libpython has no frame pointers), and each sample goes to a layer: ``crypto`` and ``kernel``
as above, else the layer of the innermost compiled function on its stack (mypyc's
``CPyDef_<module>___...``): ``engine`` for the engine's modules, ``proxy`` for the connection
path's (``setup.py``'s lists), ``event loop`` when uvloop comes first, ``other`` for the rest.
That charges the interpreter's work to the compiled code that asked for it.

The shares times the CPU per connection measured in the same run (``/proc``, perf attached,
so a little higher than ``e2e.py``'s) give microseconds per connection by object. Each system
is started fresh, as in ``e2e.py``, and profiled on its own; ``--runs`` repeats the lot and
prints medians. Needs ``perf`` (Debian: ``linux-perf``), run as root or with
``kernel.perf_event_paranoid`` <= 1.

    python bench/native_profile.py --systems native,nginx --setups require13 --runs 3
    python bench/native_profile.py --systems native --symbols 25   # also the top symbols
    python bench/native_profile.py --systems native --layers --frequency 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import e2e  # bench/e2e.py
from procs import (
    REPO,
    Process,
    median,
    pin_servers,
    print_table,
    process_tree,
    proxy_command,
)

SYSTEMS = ("native", "openssl", "nginx")
CATEGORIES = (
    ("python", re.compile(r"^libpython")),
    ("compiled", re.compile(r"^mtlsproxy_compiled")),
    ("crypto", re.compile(r"^(_rust\.abi3|libcrypto|libssl|_ssl\.)")),
    ("kernel", re.compile(r"^\[kernel")),
    ("libc", re.compile(r"^libc[.-]")),
    ("event loop", re.compile(r"^loop\.cpython")),
    ("nginx", re.compile(r"^(nginx|ngx_)")),
)
DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def category(dso: str) -> str:
    name = dso.rsplit("/", 1)[-1]
    return next((label for label, pattern in CATEGORIES if pattern.search(name)), "other")


def record(server: Process, directory: Path, setup: e2e.Setup, args, out: Path) -> dict:
    """The handshake load of ``e2e.py`` with ``perf record`` on the server's processes."""
    pids = ",".join(str(pid) for pid in process_tree(server.proc.pid))
    command = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency)]
    if args.layers:
        command += ["--call-graph", "dwarf,16384"]
    perf = subprocess.Popen(
        [*command, "-o", str(out), "-p", pids],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # perf attached before the clients start
        return e2e.measure_handshakes(server, directory, setup, args)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)


def report(data: Path, sort: str) -> list[tuple[float, str]]:
    """``perf report``'s (percent, key) lines, sorted by ``sort`` (dso, or dso,sym)."""
    command = ["perf", "report", "-i", str(data), "--no-children", "--stdio", "-g", "none"]
    text = subprocess.run(
        [*command, "--sort", sort],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = []
    for line in text.splitlines():
        match = DSO_LINE.match(line)
        if match and not line.startswith("#"):
            lines.append((float(match.group(1)), match.group(2)))
    return lines


def shares(data: Path) -> dict[str, float]:
    """Percent of ``data``'s samples by object category, in CATEGORIES' order."""
    by_category = {label: 0.0 for label, _ in CATEGORIES} | {"other": 0.0}
    for percent, dso in report(data, "dso"):
        key = category(dso)
        by_category[key] = by_category.get(key, 0.0) + percent
    return by_category


LAYERS = ("engine", "proxy", "event loop", "crypto", "kernel", "other")
FRAME = re.compile(r"^\s*[0-9a-f]+ (.*) \((.*)\)$")


def compiled_layers() -> dict[str, str]:
    """A compiled module's name, as mypyc prefixes its functions, -> its layer: ``engine`` for
    setup.py's modules under mtlsproxy/engine, ``proxy`` for its connection path."""
    spec = importlib.util.spec_from_file_location("mtlsproxy_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    layers: dict[str, str] = {}
    for source in build.compiled_modules():
        path = Path(source)
        layer = "engine" if path.is_relative_to(build.ENGINE) else "proxy"
        if layers.setdefault(path.stem, layer) != layer:
            raise SystemExit(f"{path.stem}: a module name in both layers; extend compiled_layers")
    return layers


def sample_layer(frames: list[tuple[str, str]], modules: dict[str, str]) -> str:
    """The layer of one sample's stack (leaf first): see the module docstring."""
    leaf = category(frames[0][1])
    if leaf in ("crypto", "kernel"):
        return leaf
    for symbol, dso in frames:
        kind = category(dso)
        if kind == "compiled" and symbol.startswith("CPyDef_"):
            return modules.get(symbol[len("CPyDef_") :].split("___", 1)[0], "other")
        if kind == "event loop":
            return "event loop"
    return "other"


def layer_shares(data: Path, modules: dict[str, str]) -> dict[str, float]:
    """Percent of ``data``'s samples by layer, read from ``perf script``'s call stacks."""
    counts = dict.fromkeys(LAYERS, 0)
    script = subprocess.Popen(
        ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    assert script.stdout is not None
    frames: list[tuple[str, str]] = []
    inlined: list[str] = []  # perf lists inlined frames before the function holding them
    for line in itertools.chain(script.stdout, ["\n"]):  # a blank line ends each sample
        match = FRAME.match(line.rstrip("\n"))
        if match is not None:
            symbol, dso = match.groups()
            if dso == "inlined":
                inlined.append(symbol)
            else:
                frames += [(name, dso) for name in [*inlined, symbol]]
                inlined = []
        elif not line.strip() and frames:
            counts[sample_layer(frames, modules)] += 1
            frames, inlined = [], []
    script.wait()
    total = sum(counts.values()) or 1
    return {layer: 100 * count / total for layer, count in counts.items()}


Sample = tuple[dict, dict[str, float], dict[str, float]]  # e2e's result, by object, by layer


def start_server(
    system: str,
    setup: e2e.Setup,
    directory: Path,
    upstream: int,
    pin: int | None,
    nginx: tuple[str, str],
) -> Process:
    """A fresh server of ``system`` for ``setup``, as e2e.py starts them (``nginx``: its path
    and the directive loading its stream module)."""
    if system == "nginx":
        return e2e.start_nginx_stream(nginx[0], directory, setup, upstream, nginx[1], pin)
    config = e2e.proxy_config(directory, setup, upstream, system)
    argv, tree = proxy_command(config)
    return Process(argv, directory / f"{system}-{setup.key}.log", pin, None, cwd=tree)


def print_shares(title: str, samples: dict[tuple[str, str], list[Sample]], part: int) -> None:
    """Medians of the shares in ``part`` (1: by object, 2: by layer) of each system's runs,
    with the microseconds per connection they make of its median CPU."""
    labels: list[str] = []
    for runs in samples.values():
        labels += [label for label in runs[0][part] if label not in labels]
    rows = []
    for (setup_key, system), runs in samples.items():
        if not runs[0][part]:
            continue
        cpu = median([result["cpu_us"] for result, *_ in runs])
        row: list[object] = [setup_key, system, f"{cpu:.0f}"]
        for label in labels:
            share = median([sample[part].get(label, 0.0) for sample in runs])
            row.append(f"{share:.1f}% {share * cpu / 100:.0f}" if share else "-")
        rows.append(row)
    columns = [("setup", "s"), ("system", "s"), *((name, "") for name in ["us/conn", *labels])]
    print_table(title, columns, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="native,nginx", help="of " + ", ".join(SYSTEMS))
    parser.add_argument("--setups", default="require13", help="of require13, none13, require12")
    parser.add_argument("--runs", type=int, default=3, help="each system profiled per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="handshake load per sample")
    parser.add_argument("--workers", type=int, default=3, help="handshake client processes")
    parser.add_argument("--frequency", type=int, default=2000, help="perf samples per second")
    parser.add_argument("--symbols", type=int, default=0, help="also the top N symbols")
    parser.add_argument(
        "--layers", action="store_true", help="also the CPU by layer (call graphs; not nginx)"
    )
    parser.add_argument("--keep", type=Path, help="keep perf.data files in this directory")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf not found: apt-get install -y linux-perf")
    systems = args.systems.split(",")
    setups = [s for s in e2e.SETUPS if s.key in args.setups.split(",")]
    if not setups or set(systems) - set(SYSTEMS):
        parser.error("unknown setup or system")
    nginx = e2e.find_nginx() if "nginx" in systems else ("", "")
    modules = compiled_layers() if args.layers else {}
    pin = pin_servers(e2e.SERVER_CORE, e2e.CLIENT_CORE)

    samples: dict[tuple[str, str], list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-profile-") as tmp:
        directory = Path(tmp)
        keep = args.keep or directory
        keep.mkdir(parents=True, exist_ok=True)
        upstream = e2e.pki_and_upstream(directory)
        try:
            for run in range(args.runs):
                for setup in setups:
                    for system in systems:
                        server = start_server(system, setup, directory, upstream.port, pin, nginx)
                        data = keep / f"perf-{system}-{setup.key}-{run}.data"
                        try:
                            result = record(server, directory, setup, args, data)
                        finally:
                            server.stop()
                        split = shares(data)
                        layers = (
                            layer_shares(data, modules) if modules and system != "nginx" else {}
                        )
                        samples.setdefault((setup.key, system), []).append((result, split, layers))
                        print(
                            f"run {run + 1} {setup.key} {system}: {result['cpu_us']:.0f} us/hs, "
                            + ", ".join(f"{k} {v:.1f}%" for k, v in split.items() if v)
                            + "".join(f"; layer {k} {v:.1f}%" for k, v in layers.items() if v),
                            file=sys.stderr,
                        )
                        if args.symbols and run == args.runs - 1:
                            print(f"\n{system} {setup.key}, top symbols (last run):")
                            for percent, symbol in report(data, "dso,sym")[: args.symbols]:
                                print(f"  {percent:5.2f}%  {symbol}")
        finally:
            upstream.stop()

    what = f"medians of {args.runs} runs ({args.seconds:g} s of load each; share, then us)"
    print_shares(f"Server CPU per new connection (us, perf attached) by object, {what}", samples, 1)
    if args.layers:
        print_shares(f"The same by layer (call graphs), {what}", samples, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
