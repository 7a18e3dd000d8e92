"""``vocabulary.frozen.quick_init``: a frozen dataclass built through it is the dataclass's own
object in every way the program can see."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import ClientHelloReceived, HandshakeComplete, HandshakeTimings
from mtlsproxy.engine.hello_extensions import KeyShareEntry
from mtlsproxy.vocabulary.decision import Decision
from mtlsproxy.vocabulary.frozen import quick_init


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    name: str
    size: int = 3
    tags: tuple[str, ...] = ()


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Quick:
    name: str
    size: int = 3
    tags: tuple[str, ...] = ()


def test_the_same_object_as_the_dataclass_builds() -> None:
    quick = Quick("a", tags=("x",))
    assert type(quick) is Quick
    assert (quick.name, quick.size, quick.tags) == ("a", 3, ("x",))
    assert quick == Quick("a", 3, ("x",)) and quick != Quick("b")
    assert hash(quick) == hash(Quick("a", 3, ("x",)))
    assert repr(quick) == repr(Plain("a", tags=("x",))).replace("Plain", "Quick")
    assert dataclasses.replace(quick, size=4) == Quick("a", 4, ("x",))
    assert dataclasses.astuple(quick) == ("a", 3, ("x",))
    assert pickle.loads(pickle.dumps(quick)) == quick
    assert copy.copy(quick) == quick
    assert Quick.__init__.__qualname__ == "Quick.__init__"


def test_still_frozen() -> None:
    quick = Quick("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.name = "b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del quick.size  # type: ignore[misc]
    # Another name fails as on the plain dataclass (CPython raises TypeError there, from the
    # super() of its generated __setattr__; AttributeError would be as good).
    with pytest.raises((AttributeError, TypeError)):
        quick.other = 1  # type: ignore[attr-defined]
    with pytest.raises((AttributeError, TypeError)):
        Plain("a").other = 1  # type: ignore[attr-defined]


def test_the_signature_is_the_dataclass_one() -> None:
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", 1, (), 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick("a", colour="red")  # type: ignore[call-arg]


def test_only_plain_frozen_slotted_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        name: str

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        name: str

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        names: list[str] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        name: str

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, NotFrozen, Factory, PostInit):
        with pytest.raises(TypeError):
            quick_init(cls)


@pytest.mark.parametrize(
    "cls",
    [
        ClientHello,
        KeyShareEntry,
        ClientHelloReceived,
        HandshakeComplete,
        HandshakeTimings,
        Decision,
    ],
)
def test_the_project_classes_keep_their_fields(cls: type) -> None:
    """Positional and keyword construction give the same object, of the class itself."""
    fields = dataclasses.fields(cls)
    values = [f"value {index}" for index in range(len(fields))]
    by_position = cls(*values)
    by_keyword = cls(**{field.name: value for field, value in zip(fields, values, strict=True)})
    assert type(by_position) is cls and by_position == by_keyword
    assert [getattr(by_position, field.name) for field in fields] == values
