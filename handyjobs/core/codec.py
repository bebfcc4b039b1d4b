"""One JSON codec for every record: structs to JSON-ready dicts and back, by their type hints.

A record is written field by field under the field's name, in field order: nested records as
objects, tuples and lists as arrays, ``str`` enums as their value, None as null. Reading runs the
other way, driven by the same type hints (read once per class, on first use, so that importing
the records costs nothing more): a missing key or a null where the field takes no None gives the
field's default, unknown keys are ignored (a newer file still loads), and a value of the wrong
kind raises ``TypeError``, ``ValueError`` or ``KeyError`` (what storage readers already catch).

Where a record's JSON departs from that rule, the record says so as data, never as code of its
own: field metadata (:data:`OMIT_DEFAULT`, :data:`AS_OBJECT`) and a class-level :class:`Layout`
(key order, keys derived for readers, an upgrade of an older layout).
"""

from __future__ import annotations

import enum
import operator
import sys
import types
from collections.abc import Mapping

from handyjobs import structs

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeAlias, TypeVar

    T = TypeVar("T")
    R = TypeVar("R", bound="JsonRecord")
    _Fn: TypeAlias = Callable[[Any], Any]

#: ``Any`` as the codec reads a field's annotation: a record's module imports ``typing.Any``
#: for type checkers only, so the annotation's text is evaluated with ``Any`` meaning this
#: (any JSON value, kept as it is).
_ANY = object

#: Field metadata: the key is left out of the JSON while the value equals the field's default.
OMIT_DEFAULT: Mapping[str, str] = types.MappingProxyType({"codec": "omit_default"})
#: Field metadata: pairs (``tuple[tuple[str, V], ...]``) kept as a JSON object, key by key, as
#: a mapping is; the record keeps one value per key so that nothing is lost on the way.
AS_OBJECT: Mapping[str, str] = types.MappingProxyType({"codec": "as_object"})

_MISSING: Any = object()


class Layout:
    """How one record's JSON departs from the plain rule (every field, in field order)."""

    # A plain class, not a struct: the layouts are built as the records' module is imported,
    # on the path of every command.
    __slots__ = ("derived", "order", "upgrade")

    def __init__(
        self,
        order: tuple[str, ...] = (),
        derived: Mapping[str, str] | None = None,
        upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        #: Keys written first, in this order (fields or derived keys); other fields follow.
        self.order = order
        #: Keys written for readers of the file and never read back: key -> dotted attribute
        #: path from the record (``"current.state"``).
        self.derived: Mapping[str, str] = types.MappingProxyType(dict(derived or {}))
        #: Rewrites the JSON of an older layout into this one before it is read.
        self.upgrade = upgrade


class JsonRecord:
    """The base of every record: ``to_dict`` and ``from_dict``, both through this codec."""

    #: The record's departures from the plain rule; none by default.
    json_layout: ClassVar[Layout] = Layout()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :func:`encode`)."""
        return encode(self)

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        """The record that :meth:`to_dict` wrote (see :func:`decode`)."""
        return decode(cls, d)


def encode(record: object) -> dict[str, Any]:
    """A struct as a JSON-ready dict, by the rules of its type hints and :class:`Layout`."""
    return _plan(type(record)).encode(record)


def decode(cls: type[T], data: dict[str, Any]) -> T:
    """The struct ``cls`` read back from what :func:`encode` wrote (or an older layout)."""
    return _plan(cls).decode(data)  # type: ignore[no-any-return]


class _Field:
    """One field as the codec handles it."""

    __slots__ = ("decode", "encode", "exact", "name", "nullable", "omit", "required")

    def __init__(
        self,
        name: str,
        encode: _Fn | None,
        decode: _Fn,
        exact: type[Any] | None,
        required: bool,
        nullable: bool,
        omit: Any,
    ) -> None:
        self.name = name
        #: None where the value is its own JSON form (str, int, ...).
        self.encode = encode
        #: Reads a value that is not null.
        self.decode = decode
        #: The JSON type that is the value as it is (``str`` for a ``str | None`` field).
        self.exact = exact
        self.required = required
        self.nullable = nullable
        #: The default to leave out, for an OMIT_DEFAULT field; _MISSING otherwise.
        self.omit = omit


class _Plan:
    """How one struct is written and read, worked out once from its type hints."""

    def __init__(self, cls: type[Any]) -> None:
        if not structs.is_struct(cls):
            raise TypeError(f"{cls.__name__} is not a struct")
        self.cls = cls
        self.layout: Layout = getattr(cls, "json_layout", Layout())
        hints = _type_hints(cls)
        self.fields = [_field(f, hints[f.name]) for f in structs.fields(cls)]
        self.writes = _writes(cls.__name__, self.fields, self.layout)
        # Plain tuples, unpacked in decode's loop: `list --all` reads every record of the
        # history through it.
        self.reads = [(f.name, f.decode, f.exact, f.required, f.nullable) for f in self.fields]
        # A record is made as its __init__ would make it, without calling it: the values are
        # all at hand, and an __init__ binds its arguments one by one before it is compiled.
        self.defaults = {
            f.name: f.default for f in structs.fields(cls) if f.default is not structs.MISSING
        }
        self.factories = [
            (f.name, f.default_factory)
            for f in structs.fields(cls)
            if f.default_factory is not structs.MISSING
        ]
        self.post_init = getattr(cls, "__post_init__", None)

    def encode(self, record: Any) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        out: dict[str, Any] = {}
        for key, get, enc, omit in self.writes:
            value = get(record)
            if omit is not _MISSING and value == omit:
                continue
            out[key] = value if enc is None else enc(value)
        return out

    def decode(self, data: Any) -> Any:
        """The record from a JSON object."""
        if not isinstance(data, dict):
            raise TypeError(f"{self.cls.__name__}: expected a JSON object, got {_kind(data)}")
        if self.layout.upgrade is not None:
            data = self.layout.upgrade(data)
        kwargs: dict[str, Any] = {}
        get = data.get
        for name, dec, exact, required, nullable in self.reads:
            value = get(name, _MISSING)
            if type(value) is exact:
                kwargs[name] = value
            elif value is None and nullable:
                kwargs[name] = None
            elif value is not _MISSING and value is not None:
                kwargs[name] = dec(value)
            elif required:
                what = "missing" if value is _MISSING else "null"
                raise (KeyError if value is _MISSING else TypeError)(
                    f"{self.cls.__name__}.{name} is {what}"
                )
            # else: the field's default
        values = dict(self.defaults)
        for name, factory in self.factories:
            if name not in kwargs:
                values[name] = factory()
        values.update(kwargs)
        record = object.__new__(self.cls)
        vars(record).update(values)
        if self.post_init is not None:
            self.post_init(record)
        return record


_plans: dict[type[Any], _Plan] = {}
#: Annotations already evaluated, by module and text. The records spell 32 distinct ones in
#: 141 fields, and ``typing.get_type_hints`` compiles each field's text anew: 2.5 ms for all
#: the records, against about 1 ms evaluating each text once (plans are built on the first
#: read of a record, so on every ``list``).
_hints: dict[tuple[str, str], Any] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    """The fields' type hints, as :func:`typing.get_type_hints` gives them (``Any``: object)."""
    namespace = vars(sys.modules[cls.__module__])
    out: dict[str, Any] = {}
    for f in structs.fields(cls):
        if not isinstance(f.type, str):
            out[f.name] = f.type
            continue
        key = (cls.__module__, f.type)
        if key not in _hints:
            try:
                # What get_type_hints does for a class's own annotation, text by text.
                _hints[key] = eval(f.type, namespace, {"Any": _ANY})
            except NameError as e:
                raise TypeError(f"{cls.__name__}.{f.name}: {e} (import it at run time)") from e
        out[f.name] = _hints[key]
    return out


def _plan(cls: type[Any]) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = _Plan(cls)
    return plan


def _field(f: structs.Field, hint: Any) -> _Field:
    """The codec's view of one field: its encoder, decoder, default and rules."""
    as_object = f.metadata.get("codec") == "as_object"
    # The plan reads null itself: a field's decoder only ever sees a value.
    inner = _optional_of(hint) if _is_union(hint) else hint
    enc, dec = _pairs_as_object(hint) if as_object else (_encoder(hint), _decoder(inner))
    exact = inner if inner in (str, int, float, bool) and not as_object else None
    default: Any = f.default
    if default is structs.MISSING and callable(f.default_factory):
        default = f.default_factory()
    omit: Any = _MISSING
    if f.metadata.get("codec") == "omit_default":
        if default is structs.MISSING:
            raise TypeError(f"{f.name}: OMIT_DEFAULT needs a default")
        omit = default
    required = default is structs.MISSING
    encode = None if enc is _same else enc
    return _Field(f.name, encode, dec, exact, required, _nullable(hint), omit)


def _writes(
    name: str, fields: list[_Field], layout: Layout
) -> list[tuple[str, _Fn, _Fn | None, Any]]:
    """What :meth:`_Plan.encode` writes: (key, getter, encoder, default to omit), in order."""
    by_name = {f.name: f for f in fields}
    clash = set(layout.derived) & set(by_name)
    unknown = set(layout.order) - set(by_name) - set(layout.derived)
    if clash or unknown or len(set(layout.order)) != len(layout.order):
        raise TypeError(f"{name}: bad layout (derived fields {clash}, unknown keys {unknown})")
    keys = [*layout.order, *(f.name for f in fields if f.name not in layout.order)]
    keys += [k for k in layout.derived if k not in keys]
    writes: list[tuple[str, _Fn, _Fn | None, Any]] = []
    for key in keys:
        if key in by_name:
            f = by_name[key]
            writes.append((key, operator.attrgetter(key), f.encode, f.omit))
        else:
            writes.append((key, operator.attrgetter(layout.derived[key]), _encode_any, _MISSING))
    return writes


# ---- type hints to encoders and decoders ----------------------------------------------------


# What typing.get_args and get_origin give for the hints the records use (``tuple[int, ...]``,
# ``X | None``), without importing typing.
def _args(hint: Any) -> tuple[Any, ...]:
    args: tuple[Any, ...] = getattr(hint, "__args__", ())
    return args


def _origin(hint: Any) -> Any:
    return (
        types.UnionType if isinstance(hint, types.UnionType) else getattr(hint, "__origin__", None)
    )


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType)


def _nullable(hint: Any) -> bool:
    return hint is _ANY or hint is type(None) or (_is_union(hint) and type(None) in _args(hint))


def _optional_of(hint: Any) -> Any:
    """X of ``X | None``; anything else but None in a union is not supported."""
    rest = [a for a in _args(hint) if a is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"unsupported union {hint}: only X | None")
    return rest[0]


def _encoder(hint: Any) -> _Fn:
    """A function that turns a value of ``hint`` into its JSON form."""
    enc = _encoders.get(hint)
    if enc is None:
        enc = _encoders[hint] = _new_encoder(hint)
    return enc


def _decoder(hint: Any) -> _Fn:
    """A function that reads a value of ``hint`` from its JSON form."""
    dec = _decoders.get(hint)
    if dec is None:
        dec = _decoders[hint] = _new_decoder(hint)
    return dec


# The same few hints recur in every record: each is worked out once.
_encoders: dict[Any, _Fn] = {}
_decoders: dict[Any, _Fn] = {}


def _new_encoder(hint: Any) -> _Fn:
    origin = _origin(hint)
    if hint is _ANY or hint in (str, int, float, bool, type(None)):
        return _same
    if _is_union(hint):
        inner = _encoder(_optional_of(hint))
        return inner if inner is _same else (lambda v: None if v is None else inner(v))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return operator.attrgetter("value")
    if structs.is_struct(hint):
        return lambda v: _plan(type(v)).encode(v)
    if origin in (tuple, list):
        args = _args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            items = [_encoder(a) for a in args]
            return lambda v: [enc(x) for enc, x in zip(items, v, strict=True)]
        item = _encoder(args[0])
        return (lambda v: list(v)) if item is _same else (lambda v: [item(x) for x in v])
    if origin is dict:
        _check_keys(hint)
        value = _encoder(_args(hint)[1])
        return lambda v: {_encode_key(k): value(x) for k, x in v.items()}
    raise TypeError(f"the codec cannot write {hint}")


def _new_decoder(hint: Any) -> _Fn:
    origin = _origin(hint)
    if hint is _ANY:
        return _same
    if hint in _SCALARS:
        return _SCALARS[hint]
    if _is_union(hint):
        inner = _decoder(_optional_of(hint))
        return lambda v: None if v is None else inner(v)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if structs.is_struct(hint):
        return _nested(hint)
    if origin in (tuple, list):
        args = _args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return _fixed_tuple([_decoder(a) for a in args])
        item = _decoder(args[0])
        return lambda v: origin(map(item, _array(v)))
    if origin is dict:
        key, value = (_decoder(a) for a in _args(hint))
        return lambda v: {key(k): value(x) for k, x in _object(v).items()}
    raise TypeError(f"the codec cannot read {hint}")


def _pairs_as_object(hint: Any) -> tuple[_Fn, _Fn]:
    """Encoder and decoder of ``tuple[tuple[str, V], ...]`` kept as a JSON object."""
    pair = _args(hint)[0] if _origin(hint) is tuple else None
    if pair is None or _origin(pair) is not tuple or _args(pair)[0] is not str:
        raise TypeError(f"AS_OBJECT needs tuple[tuple[str, V], ...], not {hint}")
    enc, dec = _encoder(_args(pair)[1]), _decoder(_args(pair)[1])
    return (
        lambda v: {k: enc(x) for k, x in v},
        lambda v: tuple((_str(k), dec(x)) for k, x in _object(v).items()),
    )


def _encode_any(value: Any) -> Any:
    """A value of no declared type (a derived key) as JSON, by what it is."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float)):
        return value
    if structs.is_struct(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, (tuple, list)):
        return [_encode_any(x) for x in value]
    if isinstance(value, dict):
        return {k: _encode_any(x) for k, x in value.items()}
    raise TypeError(f"the codec cannot write {type(value).__name__}")


def _encode_key(key: Any) -> Any:
    return key.value if isinstance(key, enum.Enum) else key


def _check_keys(hint: Any) -> None:
    key = _args(hint)[0]
    if not (key is str or (isinstance(key, type) and issubclass(key, str))):
        raise TypeError(f"JSON object keys are strings: cannot write {hint}")


def _nested(cls: type[Any]) -> _Fn:
    """The decoder of a record inside a record; its plan is looked up on first use, not before
    (a record may hold its own kind)."""
    plan: _Plan | None = None

    def read(v: Any) -> Any:
        nonlocal plan
        if plan is None:
            plan = _plan(cls)
        return plan.decode(v)

    return read


def _fixed_tuple(items: list[_Fn]) -> _Fn:
    def read(v: Any) -> tuple[Any, ...]:
        values = _array(v)
        if len(values) != len(items):
            raise ValueError(f"expected {len(items)} items, got {len(values)}")
        return tuple(dec(x) for dec, x in zip(items, values, strict=True))

    return read


# ---- scalars: what a hand-edited or older file may hold is read leniently -------------------


def _same(value: Any) -> Any:
    return value


def _kind(value: Any) -> str:
    return type(value).__name__


def _array(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a JSON array, got {_kind(value)}")
    return value


def _object(value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {_kind(value)}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value)  # ValueError when it is no number
    raise TypeError(f"expected an integer, got {_kind(value)}")


def _float(value: Any) -> float:
    if isinstance(value, (int, float, str)):
        return float(value)
    raise TypeError(f"expected a number, got {_kind(value)}")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a job id or a port written as a number
    raise TypeError(f"expected a string, got {_kind(value)}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise TypeError(f"expected true or false, got {_kind(value)}")


def _none(value: Any) -> None:
    if value is not None:
        raise TypeError(f"expected null, got {_kind(value)}")


_SCALARS: dict[Any, _Fn] = {
    str: _str,
    int: _int,
    float: _float,
    bool: _bool,
    type(None): _none,
}
