"""Argument checks shared by the callbacks and metrics, with messages that name the bad value."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking that it is a finite number above 0 (or at 0)."""
    bound = "at least 0" if allow_zero else "greater than 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected `{name}` to be a finite number {bound}, but got {value!r}.")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"Expected `{name}` to be a finite number {bound}, but got {value!r}.")
    return float(value)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return ``value`` after checking that it is an integer above 0 (or at 0)."""
    bound = "at least 0" if allow_zero else "at least 1"
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"Expected `{name}` to be an integer {bound}, but got {value!r}.")
    return value


def check_fraction(name: str, value: Any, *, inclusive_zero: bool = True) -> float:
    """Return ``value`` after checking that it lies in ``[0, 1]`` (or ``(0, 1]``)."""
    interval = "[0, 1]" if inclusive_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Expected `{name}` to be a number in {interval}, but got {value!r}.")
    if value > 1 or value < 0 or (value == 0 and not inclusive_zero):
        raise ValueError(f"Expected `{name}` to be a number in {interval}, but got {value!r}.")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if value not in choices:
        valid = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"Expected `{name}` to be one of {valid}, but got {value!r}.")
    return value
