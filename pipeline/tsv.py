"""Cells of ichseg's tables (BIDS TSV): the one place that says what is missing and what is true.

BIDS writes a missing value as ``n/a``. ichseg reads that, an empty cell and the ``nan`` that
pandas writes as missing, so that a table edited by hand or in R reads the same way.
"""

from __future__ import annotations

import math
import os
from typing import Any

#: What ichseg writes (and shows) for a missing value.
MISSING = "n/a"

#: Cells read as missing (compared after stripping white space; ``nan`` in any case).
MISSING_VALUES = (MISSING, "", "nan", "NaN")

#: Words read as true, in flags and in environment variables (any case).
TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t", "on"})

_MISSING_LOWER = frozenset(v.lower() for v in MISSING_VALUES)


def is_missing(value: Any) -> bool:
    """True for ``None``, NaN and the cells of :data:`MISSING_VALUES`."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in _MISSING_LOWER


def is_true(value: Any) -> bool:
    """True for the words of :data:`TRUE_WORDS` (and ``True``, ``1``)."""
    return value is not None and str(value).strip().lower() in TRUE_WORDS


def write_tsv(table, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as a TSV, missing values as :data:`MISSING`."""
    table.to_csv(path, sep="\t", index=False, na_rep=MISSING)


def read_tsv(path: str | os.PathLike, *, as_text: bool = False):
    """A TSV as a pandas DataFrame, the cells of :data:`MISSING_VALUES` as missing.

    ``as_text`` keeps every cell a string (missing ones as ``""``), for tables whose
    identifiers must not become numbers (``01`` stays ``01``).
    """
    import pandas as pd

    if as_text:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return pd.read_csv(path, sep="\t", na_values=list(MISSING_VALUES), keep_default_na=False)
