"""Holding a tenant's answers to Podium's documents, strictly, and saying what deviates without quoting it.

The rules are the schema test's (``tests/test_emulator_schema.py``): every documented field present, nothing
undocumented, at every depth (``openapi.strict``), with the documents' known looseness fixed by
``openapi.response_schema``; on a tenant with ``merge`` or ``soft-delete`` contacts also carry
``deletedAt`` and ``mergedIntoUid``. A deviation is described by its path (list indexes as ``[*]``) and its
kind, never by the value found: the value may be a customer's phone number.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from podium_client import openapi


def schema_deviations(
    answers: Iterable[tuple[str, str, Any]], capability_fields: bool
) -> tuple[int, list[dict[str, Any]]]:
    """(objects checked, deviations grouped by path and kind, most frequent first) for raw answers given
    as ``(METHOD, documented path, body)``."""
    checkers: dict[tuple[str, str], Any] = {}
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    objects = 0
    for method, template, body in answers:
        key = (method, template)
        if key not in checkers:
            schema = openapi.response_schema(method, template)
            if capability_fields:
                _add_capability_fields(schema)
            checkers[key] = openapi.validator(openapi.strict(schema))
        data = body.get("data") if isinstance(body, dict) else None
        objects += len(data) if isinstance(data, list) else 1
        for error in checkers[key].iter_errors(body):
            for where, what in _deviations(error):
                group = groups.setdefault(
                    (template, where, what),
                    {
                        "where": template,
                        "path": where,
                        "deviation": what,
                        "count": 0,
                        "example_uid": _uid_at(body, error),
                    },
                )
                group["count"] += 1
    return objects, sorted(groups.values(), key=lambda g: (-g["count"], g["where"], g["path"]))


def _uid_of(item: Any) -> str | None:
    uid = item.get("uid") if isinstance(item, dict) else None
    return uid if isinstance(uid, str) and uid else None


def _uid_at(body: Any, error: ValidationError) -> str | None:
    path = list(error.absolute_path)
    if len(path) >= 2 and path[0] == "data" and isinstance(path[1], int) and isinstance(body, dict):
        items = body.get("data")
        if isinstance(items, list) and path[1] < len(items):
            return _uid_of(items[path[1]])
    if path and path[0] == "data" and isinstance(body, dict) and isinstance(body.get("data"), dict):
        return _uid_of(body["data"])
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _deviations(error: ValidationError) -> Iterator[tuple[str, str]]:
    """(path with list indexes as [*], what is wrong) for one validation error, never quoting a value."""
    path = (
        "".join("[*]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(body)"
    )
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        for key in error.validator_value:
            if key not in instance:
                yield (f"{path}.{key}" if path != "(body)" else key), "documented field missing"
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        documented = set(error.schema.get("properties", {}))
        for key in sorted(set(instance) - documented):
            yield (f"{path}.{key}" if path != "(body)" else key), "undocumented field"
    elif error.validator == "type":
        yield path, f"{_json_type(instance)} where the documents say {error.validator_value}"
    elif error.validator == "format":
        yield path, f"not a {error.validator_value}"
    elif error.validator == "enum":
        yield path, "not one of the documented values"
    else:
        yield path, f"breaks the documented '{error.validator}'"


def _add_capability_fields(node: Any) -> None:
    """deletedAt / mergedIntoUid on every contact object schema inside `node` (capability tenants)."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and "channels" in props and "phoneNumbers" in props:
            props.update(copy.deepcopy(openapi.CAPABILITY_CONTACT_PROPERTIES))
        for value in node.values():
            _add_capability_fields(value)
    elif isinstance(node, list):
        for item in node:
            _add_capability_fields(item)
