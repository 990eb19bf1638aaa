"""Argument checks shared by the privacy and defense layers (DESIGN §2).

Every check runs on the host, before any accounting or tracing, and raises a
``ValueError`` whose message names the field, the value received and what is allowed.
Booleans are rejected where numbers are expected: ``True`` is an ``int`` in Python, and a
flag passed by mistake as a noise multiplier must not silently mean ``1.0``.
"""

from __future__ import annotations

import math
import numbers


def _real(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number ({allowed}), got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be {allowed}, got nan")
    return value


def check_delta(value: object, name: str = "delta") -> float:
    """Returns ``value`` as a float in the open interval (0, 1), else raises."""
    allowed = "in the open interval (0, 1)"
    value = _real(name, value, allowed)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_epsilon(value: object, name: str = "epsilon") -> float:
    """Returns ``value`` as a finite positive float, else raises."""
    allowed = "a finite number > 0"
    value = _real(name, value, allowed)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_sampling_rate(value: object, name: str = "sampling_rate") -> float:
    """Returns ``value`` as a float in the half-open interval (0, 1], else raises."""
    allowed = "in the half-open interval (0, 1]"
    value = _real(name, value, allowed)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_steps(value: object, name: str = "steps") -> int:
    """Returns ``value`` as an int >= 1, else raises (integral floats are refused too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_noise_multiplier(value: object, name: str = "noise_multiplier") -> float:
    """Returns ``value`` as a finite float >= 0, else raises (0 means no privacy)."""
    allowed = "a finite number >= 0"
    value = _real(name, value, allowed)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_positive(value: object, name: str) -> float:
    """Returns ``value`` as a finite positive float, else raises."""
    allowed = "a finite number > 0"
    value = _real(name, value, allowed)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``choices``, else raises."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
