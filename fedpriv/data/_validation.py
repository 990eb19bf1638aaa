"""Argument checks shared by the data layer (DESIGN §2).

Every check raises a ``ValueError`` whose message names the field, the value received
and what is allowed, so a wrong YAML value is found from the message alone. Booleans are
refused where numbers are expected: ``True`` is an ``int`` in Python, and a flag passed by
mistake as a client count must not silently mean ``1``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Returns ``value`` as an int in ``[minimum, maximum]``, else raises ``ValueError``."""
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: object) -> float:
    """Returns ``value`` as a finite float > 0, else raises ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_open_unit_interval(name: str, value: object) -> float:
    """Returns ``value`` as a float in the open interval (0, 1), else raises ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")
    return value


def check_generator(name: str, value: object) -> np.random.Generator:
    """Returns ``value`` if it is a NumPy ``Generator``, else raises ``TypeError``.

    Host-side data code takes a ``Generator`` made by ``fedpriv.keys.numpy_generator`` from
    a named key stream; the legacy global ``np.random`` state is refused because it is
    hidden randomness that breaks bit-identical reruns.
    """
    if not isinstance(value, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy.random.Generator (e.g. from "
            f"fedpriv.keys.numpy_generator), got {type(value).__name__}"
        )
    return value
