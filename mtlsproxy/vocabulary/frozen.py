"""Frozen dataclasses built at the cost of plain ones: :func:`quick_init`.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``,
since its own ``__setattr__`` refuses: on CPython 3.11 about 1.3 k instructions a field, so that
building a 17-field ``ClientHello`` costs ~25 k instructions (a fifth of reading the hello) and
a ``HandshakeComplete`` ~18 k, on every handshake. A plain slotted class stores a field in ~90.

``quick_init`` gives such a class an ``__init__`` with the same signature that makes the new
instance, for the time of its assignments, an instance of a twin subclass that adds no slot and
keeps ``object``'s own ``__setattr__`` (so each field is one plain slot store), then makes it an
instance of the class again (``__class__`` assignment between layout-identical classes). What
the rest of the program sees does not change: the type, fields, defaults, equality, hash, repr
and immutability are the dataclass's own (tests/test_frozen.py).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def quick_init(cls: type[T]) -> type[T]:
    """Replace the ``__init__`` of ``cls``, a ``@dataclass(frozen=True, slots=True)``, by one
    that stores the fields directly (module docstring). Fields with a ``default_factory``,
    ``init=False``, ``kw_only`` or a ``__post_init__`` are not supported: ``TypeError``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    names: list[str] = []
    signature: list[str] = []
    namespace: dict[str, object] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init or field.kw_only or field.default_factory is not _MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: only plain fields are supported")
        names.append(field.name)
        if field.default is _MISSING:
            signature.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            signature.append(f"{field.name}=_default_{field.name}")
    twin = type(
        f"_Building{cls.__name__}",
        (cls,),
        {"__slots__": (), "__setattr__": object.__setattr__, "__delattr__": object.__delattr__},
    )
    lines = [
        f"def __init__(self, {', '.join(signature)}):",
        "    _set(self, '__class__', _twin)",
        *(f"    self.{name} = {name}" for name in names),
        "    self.__class__ = _cls",
    ]
    namespace.update(_set=object.__setattr__, _twin=twin, _cls=cls)
    exec("\n".join(lines), namespace)  # our own source, as dataclasses makes its methods
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls
