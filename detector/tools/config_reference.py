"""Render the configuration reference (``docs/configuration.md``) from the settings model.

The settings classes are the single source: every key, its type, default and
description come from them, so the reference cannot drift from the code.
Run ``python -m detector.tools.config_reference > docs/configuration.md``.
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from detector.settings import ENV_PREFIX, Settings

HEADER = """# Configuration reference

Generated from `detector/settings.py` by
`python -m detector.tools.config_reference`; do not edit by hand.

Settings come from a TOML file (`--config PATH` or `NETFRAUD_CONFIG`), then
environment variables `NETFRAUD_<SECTION>__<KEY>`, then command-line flags,
each overriding the one before. An unknown or invalid key is an error that
names it. Secrets (`*_password`) are masked wherever settings are logged;
prefer the `*_file` variants.
"""


def render() -> str:
    """The whole reference as Markdown."""
    parts = [HEADER]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        parts.append(_section(section, model))
    return "\n".join(parts)


def _section(name: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0]
    lines = [
        f"## [{name}]",
        "",
        doc,
        "",
        "| key | type | default | environment variable | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, field in model.model_fields.items():
        env = f"`{ENV_PREFIX}{name.upper()}__{key.upper()}`"
        lines.append(
            f"| `{key}` | {_type(field.annotation)} | {_default(field.default)} | {env} | "
            f"{field.description or ''} |"
        )
    return "\n".join(lines) + "\n"


def _type(annotation: Any) -> str:
    return "`" + _type_text(annotation) + "`"


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (Union, UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "none"
    return str(getattr(annotation, "__name__", annotation))


def _default(value: Any) -> str:
    if value is None or type(value).__name__ == "PydanticUndefinedType":
        return "—"
    if isinstance(value, tuple):
        value = list(value)
    try:
        return "`" + json.dumps(value, default=str) + "`"
    except TypeError:
        return f"`{value}`"


if __name__ == "__main__":
    print(render(), end="")
