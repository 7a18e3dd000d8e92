"""N in-process mutual-TLS 1.3 handshakes on one engine, for an instruction count that a noisy
machine cannot disturb (``valgrind --tool=callgrind`` counts instructions, not seconds).

The PKI is made once (RSA key generation varies too much to sit inside a count); one warm-up
handshake comes first (imports, caches). Instructions per handshake, client and server in one
process, are the difference between two counts divided by the difference in N:

    python -m mtlsproxy pki init /tmp/cgpki
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/handshake_instructions.py native 10 /tmp/cgpki
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/handshake_instructions.py native 30 /tmp/cgpki
    # (collected at 30 - collected at 10) / 20; the same with "openssl"
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from engine import client_context, engine_server, handshake, route  # bench/engine.py

from mtlsproxy import pki
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import RouteTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("native", "openssl"))
    parser.add_argument("handshakes", type=int)
    parser.add_argument("pki_directory", type=Path, help="made by `mtlsproxy pki init`")
    args = parser.parse_args()
    files = pki.PkiFiles.at(args.pki_directory)
    table = RouteTable(route(files, ClientAuthMode.REQUIRE, allow=True))
    client = client_context(files, True, ssl.TLSVersion.TLSv1_3)
    new_server = engine_server(table, SelectingEngine if args.engine == "native" else OpenSSLEngine)
    handshake(client, new_server())  # warm-up
    for _ in range(args.handshakes):
        handshake(client, new_server())


if __name__ == "__main__":
    main()
