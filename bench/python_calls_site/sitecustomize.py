"""Imported at start-up by the proxy that ``python_calls.py`` runs (``PYTHONPATH``): counts
the interpreted Python calls, by function, between two signals.

``SIGUSR2`` clears the counts and starts counting (``sys.setprofile``); ``SIGUSR1`` stops and
writes them to ``$MTLSPROXY_PYTHON_CALLS.<pid>``, a line a function: count, file, name. A call
from compiled (mypyc) code into an interpreted function is counted like any other; compiled
functions themselves have no frame and are not seen, which is the point: what is left to
count is the Python a connection still runs as bytecode. A dataclass's generated
``__init__`` is named by its class.
"""

import os
import signal
import sys
from collections import Counter
from types import FrameType

_OUT = os.environ.get("MTLSPROXY_PYTHON_CALLS")
_counts: Counter[tuple[str, str]] = Counter()


def _profile(frame: FrameType, event: str, arg: object) -> None:
    if event != "call":
        return
    code = frame.f_code
    if code.co_name == "__init__" and code.co_filename == "<string>":
        owner = type(frame.f_locals.get("self"))
        key = ("<generated>", f"{owner.__module__}.{owner.__qualname__}.__init__")
    else:
        key = (code.co_filename.rsplit("/", 1)[-1], code.co_qualname)
    _counts[key] += 1


def _start(*_: object) -> None:
    _counts.clear()
    sys.setprofile(_profile)


def _dump(*_: object) -> None:
    sys.setprofile(None)
    with open(f"{_OUT}.{os.getpid()}", "w") as out:
        for (where, name), count in _counts.most_common():
            out.write(f"{count}\t{where}\t{name}\n")


if _OUT:
    signal.signal(signal.SIGUSR2, _start)
    signal.signal(signal.SIGUSR1, _dump)
