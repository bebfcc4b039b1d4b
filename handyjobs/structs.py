"""Value classes declared by their annotations as dataclasses are, for a fraction of the import.

``@frozen`` and ``@mutable`` give a class an ``__init__`` taking its annotated fields in order
(with their defaults), ``__eq__``, ``__repr__``, and for ``@frozen`` a ``__hash__`` and no
assignment after ``__init__`` (``__post_init__`` runs last, as with dataclasses). :func:`field`,
:func:`fields` and :func:`replace` are dataclasses' own, cut to what the package uses.

Why not :mod:`dataclasses`: every command imports the records, and ``dataclasses`` costs its
import (with ``inspect``, about 10 ms) plus one ``exec`` per generated method per class (about
20 ms for the records alone), against about 15 ms for the whole of ``python -c pass``. Here a
class costs a few dict lookups when it is defined, and its ``__init__`` binds arguments
generically until the class has made enough instances to pay for compiling its own.

The package's interfaces (a backend, a store) derive from :class:`Protocol` here: typing's for
type checkers, a plain base class at run time, so that no command imports typing.
"""

from __future__ import annotations

import types

# typing is not imported at run time: it is not on every command's path otherwise.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    # Re-exported: the package's interfaces derive from it.
    from typing import Protocol as Protocol

    from typing_extensions import dataclass_transform  # typing's own from Python 3.11

    T = TypeVar("T")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[T], T]:
        """What type checkers read: nothing at run time."""
        return lambda decorated: decorated

    class Protocol:
        """:class:`typing.Protocol` for type checkers; at run time a plain base class.

        The package's interfaces (a backend, a store) are checked statically; nothing asks
        ``isinstance`` of them, so they need no typing machinery (nor its import) to run.
        """

        __slots__ = ()


class _Missing:
    """No default given."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class FrozenInstanceError(AttributeError):
    """A field of a ``@frozen`` instance was assigned or deleted."""


class Field:
    """One field: its name, its annotation's text, its default and the data attached to it."""

    __slots__ = ("compare", "default", "default_factory", "metadata", "name", "type")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Any = MISSING,
        metadata: Mapping[str, Any] | None = None,
        compare: bool = True,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("a field takes a default or a default_factory, not both")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        # Read-only, as a dataclass field's metadata is.
        self.metadata: Mapping[str, Any] = (
            types.MappingProxyType(dict(metadata)) if metadata is not None else _EMPTY
        )
        self.compare = compare

    @property
    def init(self) -> bool:
        """Every field is an argument of ``__init__`` (as a dataclass field is by default)."""
        return True

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, type={self.type!r}, default={self.default!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    metadata: Mapping[str, Any] | None = None,
    compare: bool = True,
) -> Any:
    """A field with a default, a default factory, metadata, or left out of comparisons."""
    return Field(default, default_factory, metadata, compare)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """A value class: fields from the annotations, equal by value, hashable, read-only."""
    return _build(cls, frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable(cls: type[T]) -> type[T]:
    """A value class whose fields may be assigned after ``__init__``."""
    return _build(cls, frozen=False)


def is_struct(obj: object) -> bool:
    """Whether ``obj`` is a class made by :func:`frozen` or :func:`mutable`, or one's instance."""
    cls = obj if isinstance(obj, type) else type(obj)
    return "__struct_fields__" in cls.__dict__


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a struct class or instance, in order."""
    cls = obj if isinstance(obj, type) else type(obj)
    found: tuple[Field, ...] | None = cls.__dict__.get("__struct_fields__")
    if found is None:
        raise TypeError(f"{cls.__name__} is not a struct")
    return found


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with the fields named in ``changes`` set to new values."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(obj)(**values)


def _build(decorated: type[T], *, frozen: bool) -> type[T]:
    """Give the class its fields and methods (those it does not define itself)."""
    cls: Any = decorated  # its methods are assigned here, which type checkers refuse
    found = _own_fields(cls)
    own = cls.__dict__
    cls.__struct_fields__ = found
    cls.__struct_frozen__ = frozen
    cls.__init__ = _lazy_init(cls)
    compared = tuple(f.name for f in found if f.compare)
    if "__repr__" not in own:
        cls.__repr__ = _repr
    if "__eq__" not in own:
        cls.__eq__ = _eq_of(compared)
    if "__hash__" not in own or own["__hash__"] is None:
        # As dataclasses do: equal by value, so hashable only when read-only.
        cls.__hash__ = _hash_of(compared) if frozen else None
    if frozen:
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
    return decorated


def _own_fields(cls: type[Any]) -> tuple[Field, ...]:
    """The annotated fields of ``cls`` (ClassVars left out), checked as dataclasses check them."""
    if any("__struct_fields__" in base.__dict__ for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: a struct does not derive from another struct")
    found: list[Field] = []
    # The class's own annotations (inspect.get_annotations reads the same, for a costly import).
    own = cls.__dict__.get("__annotations__")  # noqa: RUF063
    if own is None:  # Python 3.14 makes a class's annotations when they are first asked for
        own = cls.__annotations__
    for name, text in own.items():
        if isinstance(text, str) and text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(default=value)
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"{cls.__name__}.{name}: a mutable default needs default_factory")
        spec.name, spec.type = name, text
        if spec.default is not MISSING:
            setattr(cls, name, spec.default)  # Class.field reads the default, as before
        elif isinstance(value, Field):
            delattr(cls, name)
        found.append(spec)
    seen_default = False
    for spec in found:
        has_default = spec.default is not MISSING or spec.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}.{spec.name}: a field without a default follows one")
        seen_default = seen_default or has_default
    return tuple(found)


#: Instances a class makes through the generic ``__init__`` before its own is compiled. A
#: compile costs 0.1-0.5 ms (about 2 ms for a process's first), a generic call about 2 us more
#: than a compiled one: a command makes a few dozen of a class, a long-lived runner thousands.
COMPILE_AFTER = 256


def _lazy_init(cls: type[Any]) -> Callable[..., None]:
    """An ``__init__`` that binds arguments generically, and hands over to a compiled one
    once the class has made :data:`COMPILE_AFTER` instances."""
    made = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += 1
        if made < COMPILE_AFTER:
            _bind(cls, self, args, kwargs)
            return
        init = _compile_init(cls)
        cls.__init__ = init
        init(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _bind(cls: type[Any], self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """What the compiled ``__init__`` does, field by field, with its errors."""
    found: tuple[Field, ...] = cls.__dict__["__struct_fields__"]
    if len(args) > len(found):
        raise TypeError(f"{cls.__name__}() takes {len(found)} arguments, {len(args)} given")
    given = {spec.name: value for spec, value in zip(found, args, strict=False)}
    for name, value in kwargs.items():
        if name in given:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        given[name] = value
    values = vars(self)
    for spec in found:
        if spec.name in given:
            values[spec.name] = given.pop(spec.name)
        elif spec.default is not MISSING:
            values[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            values[spec.name] = spec.default_factory()
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: {spec.name!r}")
    if given:
        raise TypeError(
            f"{cls.__name__}() got an unexpected keyword argument {next(iter(given))!r}"
        )
    if hasattr(cls, "__post_init__"):
        self.__post_init__()


def _compile_init(cls: type[Any]) -> Callable[..., None]:
    """The ``__init__`` a dataclass would have: one assignment per field, no loop."""
    found: tuple[Field, ...] = cls.__dict__["__struct_fields__"]
    names: dict[str, Any] = {"MISSING": MISSING}
    params: list[str] = []
    body: list[str] = ["_fields_ = _self_.__dict__"]
    for spec in found:
        name = spec.name
        if spec.default is not MISSING:
            names[f"_d_{name}"] = spec.default
            params.append(f"{name}=_d_{name}")
        elif spec.default_factory is not MISSING:
            names[f"_f_{name}"] = spec.default_factory
            params.append(f"{name}=MISSING")
            body.append(f"if {name} is MISSING: {name} = _f_{name}()")
        else:
            params.append(name)
        body.append(f"_fields_[{name!r}] = {name}")
    if hasattr(cls, "__post_init__"):
        body.append("_self_.__post_init__()")
    source = f"def __init__(_self_, {', '.join(params)}):\n    " + "\n    ".join(body) + "\n"
    exec(compile(source, f"<{cls.__qualname__}.__init__>", "exec"), names)
    init: Callable[..., None] = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _repr(self: Any) -> str:
    inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
    return f"{type(self).__qualname__}({inner})"


def _eq_of(compared: tuple[str, ...]) -> Callable[[Any, object], bool]:
    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        # Tuples, as dataclasses compare: the same object is equal to itself (a NaN too).
        mine = tuple([getattr(self, n) for n in compared])
        return mine == tuple([getattr(other, n) for n in compared])

    return __eq__


def _hash_of(compared: tuple[str, ...]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in compared))

    return __hash__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")
