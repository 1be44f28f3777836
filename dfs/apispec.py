"""Request fields declared once: the same table checks a JSON body and describes it in OpenAPI.

A service lists, for each operation, the fields its handler reads (`Field`s built with `integer`,
`string`, ...). `checked` validates a body against them before the handler runs (wrong type, out of
bounds, missing: 400 with the field named) and hands the handler a `Params` that refuses to read a
field the table does not declare, so the table and the handler cannot drift apart unnoticed.
`request_body` turns the same fields into the OpenAPI schema of the request.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dfs.errors import DfsError
from dfs.limits import INT64_MAX, INT64_MIN, MAX_LIST_ITEMS, MAX_STRING
from dfs.names import encoded
from dfs.web import Params


@dataclass(frozen=True)
class Field:
    """One JSON field: its JSON-schema type and bounds. `null` counts as absent (the default applies)."""

    type: str  # integer, number, string, boolean, array, object
    description: str = ""
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    #: Plain text: no NUL, strict UTF-8. Names, paths and link targets are not plain: the FUSE client
    #: sends undecodable bytes as surrogate escapes (dfs/names.py), and the domain modules check the rest.
    plain: bool = True
    enum: tuple[str, ...] | None = None
    items: Field | None = None
    max_items: int | None = None
    properties: Mapping[str, Field] = field(default_factory=dict)
    example: Any = None  # for the document (fuzzers start from it)
    pattern: str | None = None  # a regular expression the string must contain a match of
    #: errno for a value above `maximum` or longer than `max_length`: ENAMETOOLONG for names, EFBIG for sizes.
    too_large: int = errno.EINVAL

    def schema(self) -> dict[str, Any]:
        """This field as an OpenAPI 3.0 schema."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "integer":
            out["format"] = "int64"
        for key, value in (("description", self.description), ("default", self.default),
                           ("minimum", self.minimum), ("maximum", self.maximum),
                           ("minLength", self.min_length), ("maxLength", self.max_length),
                           ("maxItems", self.max_items), ("example", self.example), ("pattern", self.pattern)):
            if value is not None and value != "":
                out[key] = value
        if self.exclusive_minimum:
            out["exclusiveMinimum"] = True
        if self.enum:
            out["enum"] = list(self.enum)
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.type == "object":
            out.update(object_schema(self.properties))
        if not self.required:
            out["nullable"] = True
        return out


Fields = Mapping[str, Field]


def integer(minimum: int = INT64_MIN, maximum: int = INT64_MAX, *, required: bool = False, default: int | None = None,
            description: str = "", example: int | None = None, too_large: int = errno.EINVAL) -> Field:
    return Field("integer", description, required, default, minimum, maximum, example=example, too_large=too_large)


def number(minimum: float, maximum: float, *, exclusive_minimum: bool = False, default: float | None = None,
           description: str = "") -> Field:
    return Field("number", description, False, default, minimum, maximum, exclusive_minimum)


def string(max_length: int = MAX_STRING, *, required: bool = False, min_length: int | None = None,
           default: str | None = None, plain: bool = True, enum: tuple[str, ...] | None = None,
           description: str = "", example: str | None = None, pattern: str | None = None,
           too_large: int = errno.EINVAL) -> Field:
    return Field("string", description, required, default, min_length=min_length, max_length=max_length,
                 plain=plain, enum=enum, example=example, pattern=pattern, too_large=too_large)


def boolean(default: bool | None = None, description: str = "") -> Field:
    return Field("boolean", description, default=default)


def array(items: Field, max_items: int = MAX_LIST_ITEMS, description: str = "") -> Field:
    """A list of `items`, none of them null."""
    return Field("array", description, items=replace(items, required=True), max_items=max_items)


def obj(properties: Fields, description: str = "") -> Field:
    return Field("object", description, properties=properties)


def object_schema(fields: Fields) -> dict[str, Any]:
    """`properties` and `required` of an object whose members are `fields`."""
    out: dict[str, Any] = {"properties": {name: f.schema() for name, f in fields.items()}}
    required = [name for name, f in fields.items() if f.required]
    if required:
        out["required"] = required
    return out


def request_body(fields: Fields) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a JSON object made of `fields`."""
    schema = {"type": "object", **object_schema(fields)}
    return {"required": any(f.required for f in fields.values()),
            "content": {"application/json": {"schema": schema}}}


# -- checking ---------------------------------------------------------------------------------------------------
# The checks raise `_Invalid` without building any text; the field's path ("chunks[3].version") is put
# together only for the error, so a chunk report of millions of items is checked at a bearable speed.

class _Invalid(Exception):
    def __init__(self, what: str, err: int = errno.EINVAL, missing: bool = False) -> None:
        self.what, self.err, self.missing = what, err, missing
        self.path: list[str] = []  # innermost first


def _check_string(f: Field, value: str) -> None:
    if f.max_length is not None and len(value) > f.max_length:
        raise _Invalid(f"is longer than {f.max_length} characters", f.too_large)
    if f.min_length is not None and len(value) < f.min_length:
        raise _Invalid("cannot be empty" if f.min_length == 1 else f"is shorter than {f.min_length} characters")
    if not f.plain:
        try:
            encoded(value)
        except DfsError:
            raise _Invalid("must be UTF-8 text (bytes that are not may only travel as surrogate escapes)") from None
    elif "\0" in value:
        raise _Invalid("may not contain NUL")
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid("must be UTF-8 text (it holds a lone surrogate)") from None
    if f.enum and value not in f.enum:
        raise _Invalid(f"must be one of {', '.join(f.enum)}")
    if f.pattern and not re.search(f.pattern, value):
        raise _Invalid(f"does not match {f.pattern}")


def _check_number(f: Field, value: float) -> None:
    exact = f.type == "integer"
    if f.minimum is not None and (value <= f.minimum if f.exclusive_minimum else value < f.minimum):
        bound = f.minimum if exact else f"{f.minimum:g}"
        raise _Invalid(f"must be {'more than' if f.exclusive_minimum else 'at least'} {bound}")
    if f.maximum is not None and value > f.maximum:
        raise _Invalid(f"must be at most {f.maximum if exact else f'{f.maximum:g}'}", f.too_large)


def _check_value(f: Field, value: Any) -> None:
    kind = f.type
    if kind == "integer":
        if value.__class__ is not int and (isinstance(value, bool) or not isinstance(value, int)):
            raise _Invalid("must be an integer")
        _check_number(f, value)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Invalid("must be a number")
        _check_number(f, value)
    elif kind == "string":
        if not isinstance(value, str):
            raise _Invalid("must be a string")
        _check_string(f, value)
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _Invalid("must be true or false")
    elif kind == "array":
        if not isinstance(value, list):
            raise _Invalid("must be a list")
        if f.max_items is not None and len(value) > f.max_items:
            raise _Invalid(f"has more than {f.max_items} items")
        assert f.items is not None
        items = f.items
        for i, item in enumerate(value):
            try:
                if item is None:
                    raise _Invalid("cannot be null")
                _check_value(items, item)
            except _Invalid as bad:
                bad.path.append(f"[{i}]")
                raise
    elif kind == "object":
        if not isinstance(value, dict):
            raise _Invalid("must be an object")
        _check_members(value, f.properties)


def _check_members(body: Mapping[str, Any], fields: Fields) -> None:
    for name, f in fields.items():
        value = body.get(name)
        try:
            if value is None:
                if f.required:
                    raise _Invalid("", missing=True)
                continue
            _check_value(f, value)
        except _Invalid as bad:
            bad.path.append(f".{name}")
            raise


def check(body: Mapping[str, Any], fields: Fields) -> None:
    """Raise EINVAL (or the field's `too_large` errno) naming the first field of `body` that `fields`
    does not allow; unknown keys are ignored."""
    try:
        _check_members(body, fields)
    except _Invalid as bad:
        where = "".join(reversed(bad.path)).removeprefix(".")
        raise DfsError(bad.err, f"missing field '{where}'" if bad.missing else f"'{where}' {bad.what}") from None


def checked(params: Params, fields: Fields) -> Params:
    """`params` checked against `fields`, as a `Params` that reads only the declared fields."""
    check(params.data, fields)
    return Params(params.data, declared=frozenset(fields), typed=params.typed)
