"""Checks on JSON schemas (pydantic's and the served OpenAPI's): which object properties lack a
description, and which objects would accept unknown fields."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

REF_PREFIXES = ("#/components/schemas/", "#/$defs/")


def _resolve(ref: str, definitions: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    for prefix in REF_PREFIXES:
        if ref.startswith(prefix):
            name = ref.removeprefix(prefix)
            return name, definitions[name]
    raise ValueError(f"unexpected reference {ref}")


def _children(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        yield from schema.get(key, [])
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield schema[key]
    yield from (schema.get("properties") or {}).values()


def object_schemas(root: Mapping[str, Any], definitions: Mapping[str, Any]
                   ) -> dict[str, Mapping[str, Any]]:
    """Every object schema reachable from ``root`` (by name: its path for inline ones)."""
    found: dict[str, Mapping[str, Any]] = {}
    stack: list[tuple[str, Mapping[str, Any]]] = [("$", root)]
    while stack:
        name, schema = stack.pop()
        if "$ref" in schema:
            ref_name, target = _resolve(schema["$ref"], definitions)
            if ref_name not in found:
                stack.append((ref_name, target))
            continue
        if "properties" in schema:
            if name in found:
                continue
            found[name] = schema
        stack.extend((f"{name}.{i}", child) for i, child in enumerate(_children(schema)))
    return found


def undescribed_properties(objects: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``Model.field`` for every property without a non-empty description."""
    return [f"{name}.{field}" for name, schema in objects.items()
            for field, prop in schema["properties"].items()
            if not str(prop.get("description", "")).strip()]


def open_objects(objects: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Object schemas that do not forbid unknown properties."""
    return [name for name, schema in objects.items()
            if schema.get("additionalProperties") is not False]
