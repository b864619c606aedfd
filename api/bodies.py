"""JSON bodies mean what the OpenAPI document says: a number is a JSON number.

Pydantic's lax mode would also take `true` (as 1) or `"12"` for an int or float field, which
the document calls invalid; schemathesis' negative tests found those accepted. Numbers of the
request bodies are therefore strict (an int still counts as a float); Decimal money fields keep
taking strings, which the document states (`"12000.50"`).
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, Strict, create_model, field_validator

M = TypeVar("M", bound=BaseModel)


def strict_numbers(annotation: Any) -> Any:
    """The annotation with every int and float in it (also in unions, lists, dict values) strict."""
    if annotation in (int, float):
        return Annotated[annotation, Strict()]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return Union[tuple(strict_numbers(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is dict and len(args) == 2:
        return dict.__class_getitem__((args[0], strict_numbers(args[1])))
    if origin is list and len(args) == 1:
        return list.__class_getitem__(strict_numbers(args[0]))
    return annotation


def with_strict_numbers(model: type[M], name: str, doc: str) -> type[M]:
    """A subclass of `model` (same fields, validators and constraints) whose numbers are strict
    and whose text refuses NUL (JsonBody)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        strict = strict_numbers(info.annotation)
        if strict is not info.annotation:
            fields[field_name] = (strict, copy.copy(info))
    bases: tuple[type[BaseModel], ...] = (model, JsonBody)
    made = create_model(name, __base__=bases, __doc__=doc, __module__=__name__, **fields)
    return typing.cast(type[M], made)


NUL_MESSAGE = "text must not contain NUL (U+0000) characters"


def contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL character anywhere (PostgreSQL text cannot store one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(v) for v in value)
    return False


class JsonBody(BaseModel):
    """Base of the request bodies: every text field refuses NUL, with a 422 naming the field.

    PostgreSQL cannot store U+0000 in text; without this the insert failed and the answer was a
    misleading 503 "retry" (found by schemathesis), or, for a reason sent to a workflow, an
    activity that could never write it.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if contains_nul(value):
            raise ValueError(NUL_MESSAGE)
        return value
