"""Podium's published OpenAPI documents (vendored beside this file, unchanged) and schemas from them.

The documents are OpenAPI 3.0 (`nullable`, `format: uuid`), so validation uses
`openapi-schema-validator`'s OAS 3.0 dialect on top of `jsonschema` rather than plain JSON Schema,
which does not know `nullable`.

Known looseness of the documents is fixed here, in one place, and nowhere else (see README.md):
a list operation's `data` is an array (`contact.index` declares one object), a paginated list's
`metadata` carries `nextCursor` (null on the last page), and an error's `code` is a string (the
documents say integer; Podium's developer docs and every tenant send `rate_limit`, ...).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

from openapi_schema_validator import OAS30Validator, oas30_format_checker

DOCUMENTS = ("contacts", "accounts", "webhooks")
_METHODS = ("get", "post", "put", "patch", "delete")

#: The contact fields that exist only on tenants with the `merge` or `soft-delete` capability.
CAPABILITY_CONTACT_PROPERTIES: dict[str, Any] = {
    "deletedAt": {"type": "string", "format": "date-time", "nullable": True},
    "mergedIntoUid": {"type": "string", "format": "uuid", "nullable": True},
}

_CURSOR = {"type": "string", "nullable": True}


@cache
def _document(name: str) -> dict[str, Any]:
    if name not in DOCUMENTS:
        raise KeyError(f"no vendored OpenAPI document {name!r}; have {', '.join(DOCUMENTS)}")
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def document(name: str) -> dict[str, Any]:
    """A copy of one vendored document (`contacts`, `accounts` or `webhooks`) as published."""
    return copy.deepcopy(_document(name))


def _inline(node: Any, doc: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#/") or ref in seen:
                raise ValueError(f"cannot inline $ref {ref!r}")
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            return _inline(target, doc, (*seen, ref))
        return {key: _inline(value, doc, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, doc, seen) for item in node]
    return node


def schema_for(component: str, document_name: str | None = None) -> dict[str, Any]:
    """The component schema `component` (e.g. `contact`, `location`, `webhook`), `$ref`s inlined.

    Without `document_name`, the documents are searched in order (`Error` is in all three; the
    first is returned). Raises KeyError for an unknown component.
    """
    names = (document_name,) if document_name else DOCUMENTS
    for name in names:
        doc = _document(name)
        schemas = doc.get("components", {}).get("schemas", {})
        if component in schemas:
            schema: dict[str, Any] = _inline(schemas[component], doc)
            return schema
    raise KeyError(f"no component schema {component!r} in {', '.join(names)}")


def operations() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """Every documented operation as `(document, METHOD, path, operation object)`."""
    for name in DOCUMENTS:
        for path, item in _document(name)["paths"].items():
            for method in _METHODS:
                if method in item:
                    yield name, method.upper(), path, item[method]


def _operation(method: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for name in DOCUMENTS:
        doc = _document(name)
        item = doc["paths"].get(path)
        if item is not None and method.lower() in item:
            return doc, item[method.lower()]
    raise KeyError(f"no documented operation {method.upper()} {path}")


def operation(method: str, path: str) -> dict[str, Any]:
    """A copy of the documented operation `METHOD path` (path as documented: `/v4/contacts/{identifier}`)."""
    return copy.deepcopy(_operation(method, path)[1])


def _paginated(op: dict[str, Any]) -> bool:
    return any(p.get("in") == "query" and p.get("name") == "cursor" for p in op.get("parameters", []))


def _is_list(op: dict[str, Any]) -> bool:
    return str(op.get("operationId", "")).endswith((".index", ".list"))


def _fix_error(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    if "code" in props:
        props["code"] = {**props["code"], "type": "string"}
    return schema


def error_schema() -> dict[str, Any]:
    """Podium's error envelope `{"code", "message", "moreInfo"}` with `code` a string."""
    return _fix_error(schema_for("Error"))


def response_schema(
    method: str, path: str, status: int | str | None = None, *, as_published: bool = False
) -> dict[str, Any]:
    """The JSON schema of the response to `METHOD path` (the first 2xx unless `status` is given).

    The known looseness is fixed unless `as_published`: list `data` is an array, a paginated
    list's `metadata` has a nullable `nextCursor` (and `previousCursor` where documented), and an
    error response's `code` is a string. `status="default"` is the error response.
    """
    doc, op = _operation(method, path)
    responses = op["responses"]
    key = str(status) if status is not None else next(s for s in responses if s.startswith("2"))
    schema: dict[str, Any] = _inline(responses[key]["content"]["application/json"]["schema"], doc)
    if as_published:
        return schema
    if key == "default" or not key.startswith("2"):
        return _fix_error(schema)
    props = schema.setdefault("properties", {})
    data = props.get("data")
    if _is_list(op) and isinstance(data, dict) and data.get("type") != "array":
        # The documents declare contact.index's `data` as one contact; Podium returns a list of them.
        item = {k: v for k, v in data.items() if k != "nullable"}
        props["data"] = {"type": "array", "items": item}
    if _paginated(op):
        meta = props.setdefault("metadata", {"type": "object", "properties": {}})
        meta_props = meta.setdefault("properties", {})
        meta_props["nextCursor"] = dict(_CURSOR)
        if "previousCursor" in meta_props:
            meta_props["previousCursor"] = dict(_CURSOR)
    return schema


def request_schema(method: str, path: str) -> dict[str, Any] | None:
    """The JSON schema of the request body of `METHOD path`, or None when it takes no body."""
    doc, op = _operation(method, path)
    body = op.get("requestBody")
    if not body:
        return None
    schema: dict[str, Any] = _inline(body["content"]["application/json"]["schema"], doc)
    return schema


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` where every object requires all its documented properties and allows no others.

    Applied recursively (properties, array items, combinators), this is how the emulator is held to
    the documents: every documented field present (null where empty), nothing undocumented added.
    """
    out = copy.deepcopy(schema)
    _tighten(out)
    return out


def _tighten(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _tighten(item)
        return
    if not isinstance(node, dict):
        return
    props = node.get("properties")
    if isinstance(props, dict):
        node["required"] = sorted(props)
        node["additionalProperties"] = False
        for sub in props.values():
            _tighten(sub)
    for key in ("items", "allOf", "anyOf", "oneOf", "not"):
        if key in node:
            _tighten(node[key])


def add_properties(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of an object schema with `extra` properties added (e.g. CAPABILITY_CONTACT_PROPERTIES)."""
    out = copy.deepcopy(schema)
    out.setdefault("properties", {}).update(copy.deepcopy(extra))
    if "required" in out:
        out["required"] = sorted(set(out["required"]) | set(extra))
    return out


def validator(schema: dict[str, Any]) -> OAS30Validator:
    """An OpenAPI 3.0 validator for `schema`, checking formats (`uuid`, `date-time`, ...)."""
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def validate(instance: Any, schema: dict[str, Any] | OAS30Validator) -> list[str]:
    """Every violation of `schema` by `instance`, as `"<json path>: <message>"`, sorted; [] when valid."""
    check = schema if isinstance(schema, OAS30Validator) else validator(schema)
    return sorted(f"{error.json_path}: {error.message}" for error in check.iter_errors(instance))
