"""Byte sizes: parsing user budgets ("2GiB", 1 << 30) and printing them."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str | None, field: str = "size") -> int | None:
    """Bytes as an int; `None` stays `None`.

    Accepts a non-negative int (or integral float), or a string with an optional unit:
    "0", "512MiB", "1.5 GB", "64k" (K/M/G/T without `B` are binary, like KiB). A bad value
    raises ValueError naming `field`.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a number of bytes or a string like '2GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{field} must be a whole number of bytes >= 0, got {value!r}")
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{field}={value!r} is not a size: use bytes (an int) or a number with a unit "
                "(B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. '2GiB'"
            )
        return int(float(match.group(1)) * _UNITS[unit])
    raise ValueError(f"{field} must be a number of bytes or a string like '2GiB', got {type(value).__name__}")


def format_bytes(n: int) -> str:
    """`1536` -> "1.50 KiB"; exact bytes under 1 KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"  # pragma: no cover - loop always returns
