"""Byte sizes as people write them: 536870912, "512MB", "512MiB", "1.5G", "2Gi".

Decimal units (K, M, G, T, with or without B) are powers of 1000 and binary ones (Ki,
Mi, Gi, Ti, with or without B) powers of 1024, as Kubernetes reads them. Case is ignored.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_size(value: int | float | str | None) -> int | None:
    """Bytes, or None for no size ("" or None). Raises ValueError for anything else, and
    for a size that is not positive."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        size = int(value)
    else:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"not a size: {value!r} (write e.g. 536870912, 512MB or 512MiB)")
        number, unit = match.groups()
        size = int(float(number) * _UNITS[(unit or "").lower()])
    if size <= 0:
        raise ValueError(f"a size must be positive: {value!r}")
    return size

