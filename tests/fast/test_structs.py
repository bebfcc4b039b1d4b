"""The value classes behave as the dataclasses they replace: the records rely on each rule here."""

from __future__ import annotations

import copy
import math
import pickle
from typing import ClassVar

import pytest

from handyjobs import structs
from handyjobs.structs import (
    FrozenInstanceError,
    field,
    fields,
    frozen,
    is_struct,
    mutable,
    replace,
)


@frozen
class Point:
    """A frozen struct with a plain default, a factory and a field left out of comparisons."""

    LIMIT: ClassVar[int] = 3
    x: int
    y: float = 0.0
    tags: tuple[str, ...] = field(default_factory=tuple)
    note: str | None = field(default=None, compare=False, metadata={"codec": "omit_default"})


@mutable
class Box:
    """A mutable struct whose factory gives each instance its own list."""

    items: list[int] = field(default_factory=list)


@frozen
class Checked:
    """A frozen struct that checks itself and normalises a field after ``__init__``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low above high")
        object.__setattr__(self, "high", self.high * 1)


def test_init_takes_fields_in_order_with_defaults_and_keywords() -> None:
    assert Point(1) == Point(x=1, y=0.0, tags=())
    assert Point(1, 2.5, ("a",)).tags == ("a",)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, nothing=2)  # type: ignore[call-arg]
    assert Point.y == 0.0  # the class reads the default, as a dataclass's does
    assert [f.name for f in fields(Point)] == ["x", "y", "tags", "note"]  # ClassVar left out
    assert fields(Point(1))[3].metadata == {"codec": "omit_default"}


def test_equality_hash_and_repr_are_by_value() -> None:
    assert Point(1, note="a") == Point(1, note="b")  # compare=False
    assert hash(Point(1, note="a")) == hash(Point(1, note="b"))
    assert Point(1) != Point(2)
    assert len({Point(1), Point(1), Point(2)}) == 2
    nan = math.nan
    assert Point(1, nan) == Point(1, nan)  # the same object is equal to itself, as in a tuple
    assert repr(Point(1, tags=("a",))) == "Point(x=1, y=0.0, tags=('a',), note=None)"
    same_values: object = (1, 0.0, (), None)
    assert Point(1) != same_values
    with pytest.raises(TypeError):
        hash(Box())  # a mutable struct is not hashable


def test_frozen_refuses_assignment_and_mutable_takes_it() -> None:
    point = Point(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del point.x
    box, other = Box(), Box()
    box.items.append(1)
    assert other.items == []  # each instance has its own
    box.items = [5]
    assert box == Box([5])


def test_post_init_runs_last() -> None:
    assert Checked(1, 2).high == 2
    with pytest.raises(ValueError, match="low above high"):
        Checked(3, 2)


def test_replace_copy_and_pickle_keep_the_value() -> None:
    point = Point(1, 2.0, ("a",), "n")
    assert replace(point, x=5) == Point(5, 2.0, ("a",), "n")
    with pytest.raises(TypeError, match="no field"):
        replace(point, z=1)
    with pytest.raises(ValueError, match="low above high"):
        replace(Checked(1, 2), low=9)  # __post_init__ checks a copy too
    assert copy.deepcopy(point) == point
    assert pickle.loads(pickle.dumps(point)) == point


def test_declaration_errors_are_caught_where_the_class_is_written() -> None:
    with pytest.raises(TypeError, match="without a default follows"):

        @frozen
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(ValueError, match="default_factory"):

        @frozen
        class Shared:
            a: list[int] = []  # noqa: RUF012

    assert is_struct(Point) and is_struct(Point(1)) and not is_struct(object())


def test_init_binds_the_same_before_and_after_it_is_compiled() -> None:
    @frozen
    class Pair:
        a: int
        b: list[int] = field(default_factory=list)

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    seen = []
    for i in range(structs.COMPILE_AFTER + 3):  # the generic __init__, then the compiled one
        assert Pair(i) == Pair(a=i, b=[])
        assert Pair(i).b is not Pair(i).b
        bad: tuple[object, ...]
        for bad in ((), (1, [], 3)):
            with pytest.raises(TypeError):
                Pair(*bad)
        with pytest.raises(TypeError):
            Pair(1, a=2)  # type: ignore[misc]
        with pytest.raises(TypeError):
            Pair(1, c=2)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="negative"):
            Pair(-1)
        seen.append(Pair.__init__.__code__.co_filename)
    assert seen[0] != seen[-1]  # it was compiled on the way
