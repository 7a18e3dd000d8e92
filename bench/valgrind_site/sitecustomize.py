"""Imported at start-up by the proxies that ``workers_instructions.py`` runs under callgrind
(``PYTHONPATH``; a worker started by ``exec`` inherits it).

The proxy feeds a read to the engine in slices sized from the wall-clock time the last slice
took (``proxy.connection.FEED_BUDGET``, 2 ms). Under callgrind everything runs ~50x slower,
so that clock makes it cut a 1 KiB request into slices and feed them over several turns of
the event loop, which it never does at full speed (a keep-alive read costs ~10-20 us there):
the counts would be of a path the proxy does not take. The budget is lifted here, for these
counts only.
"""

import mtlsproxy.proxy.connection as _connection

_connection.FEED_BUDGET = 3600.0
