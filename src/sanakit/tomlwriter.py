"""The TOML writer of sanakit configs (the SimpleTuner importer, ``sanakit configure`` and the
demo's ``config.toml``), with an optional comment block before any key or table.

Handles what :func:`sanakit.config.to_dict` produces: tables, arrays of tables, strings, bools,
ints, floats and flat arrays of those; ``None`` values are left out (TOML has no null), as
``to_dict`` leaves them out. ``tomllib.loads(dumps(d))`` equals ``d`` less its ``None`` values
(tuples become lists).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping
from typing import Any

WIDTH = 100


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def value_text(value: Any) -> str:
    """One TOML value (a string, bool, int, float or flat array)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def comment_lines(text: str, indent: str = "") -> list[str]:
    """``text`` as ``# ...`` lines wrapped at :data:`WIDTH` characters."""
    body = textwrap.wrap(text, WIDTH - len(indent) - 2, subsequent_indent="  ") or [""]
    return [f"{indent}# {line}".rstrip() for line in body]


def dumps(
    data: Mapping[str, Any],
    comments: Mapping[str, list[str]] | None = None,
    header: list[str] | None = None,
) -> str:
    """TOML text for ``data``. ``comments`` maps dotted paths (``train.lr``, ``train.ema``,
    ``data.datasets[1].crop``) to comment texts written just before that key or table header;
    ``header`` texts open the file."""
    comments = comments or {}
    lines: list[str] = []
    for text in header or []:
        lines += comment_lines(text)
    _table(lines, "", "", data, comments)
    return "\n".join(lines).strip("\n") + "\n"


def _table(
    lines: list[str], path: str, name: str, table: Mapping[str, Any], comments: Mapping[str, Any]
) -> None:
    """Write the plain keys of ``table``, then its sub-tables and arrays of tables."""
    prefix = f"{path}." if path else ""
    named = f"{name}." if name else ""
    for key, value in table.items():
        if value is None or isinstance(value, Mapping) or _is_table_array(value):
            continue
        for text in comments.get(prefix + key, []):
            lines += comment_lines(text)
        lines.append(f"{key} = {value_text(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines.append("")
            for text in comments.get(prefix + key, []):
                lines += comment_lines(text)
            lines.append(f"[{named}{key}]")
            _table(lines, prefix + key, named + key, value, comments)
        elif _is_table_array(value):
            for i, item in enumerate(value):
                lines.append("")
                above = comments.get(prefix + key, []) if i == 0 else []
                for text in above + comments.get(f"{prefix}{key}[{i}]", []):
                    lines += comment_lines(text)
                lines.append(f"[[{named}{key}]]")
                _table(lines, f"{prefix}{key}[{i}]", named + key, item, comments)


def paths_of(data: Mapping[str, Any], path: str = "") -> set[str]:
    """Every dotted path :func:`dumps` can attach a comment to."""
    out = {path} if path else set()
    prefix = f"{path}." if path else ""
    for key, value in data.items():
        if isinstance(value, Mapping):
            out |= paths_of(value, prefix + key)
        elif _is_table_array(value):
            out.add(prefix + key)
            for i, item in enumerate(value):
                out |= paths_of(item, f"{prefix}{key}[{i}]")
        elif value is not None:
            out.add(prefix + key)
    return out
