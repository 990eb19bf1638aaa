"""What a leakage assessment concludes from its jobs: pure functions, no I/O.

The assessment (``experiments/assess.py``) runs each attack of a battery against the
non-private run, the configured defense stack and DP-SGD over a grid of privacy settings;
every job leaves a ``metrics.json``. This module decides, per attack, whether it stays below
the "recognisable" threshold at each setting, the weakest setting along each grid axis at
which it does, and the cheapest setting at which every attack does.

Non-monotone curves (an attack that fails at ε = 8 but holds at ε = 64, e.g. an unlucky
restart) are handled by one rule, stated in the report: a setting counts only if the attack
holds there AND at every stronger setting of the same axis. A hold beyond the first failure
is listed as ignored, never counted.

References:
    Geiping, Bauermeister, Dröge, Moeller. "Inverting Gradients — How easy is it to break
    privacy in federated learning?" NeurIPS 2020, arXiv:2003.14053 (the attack and the SSIM
    reading of "recognisable").
    Abadi et al. "Deep Learning with Differential Privacy." CCS 2016, arXiv:1607.00133 (DP-SGD,
    whose ε is the guarantee; the attacks are only evidence).
"""

from __future__ import annotations

import dataclasses
import math

ROLES = ("nonprivate", "stack", "grid")
DIRECTIONS = ("lower", "higher")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Threshold:
    """An attack holds at a setting when ``metric`` is finite and below ``below``."""

    metric: str
    below: float

    def __post_init__(self):
        if not self.metric.startswith("attack."):
            raise ValueError(f"assess.thresholds.*.metric must be an attack.* key of metrics.json, got {self.metric!r}")
        if not math.isfinite(self.below):
            raise ValueError(f"assess.thresholds.*.below must be a finite number, got {self.below!r}")

    def holds(self, value) -> bool:
        """A missing or non-finite score (the attack did not report it) is not evidence of a hold."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        return math.isfinite(number) and number < self.below


@dataclasses.dataclass(frozen=True, kw_only=True)
class Axis:
    """One grid axis: the config ``key`` it sets and the direction that protects more."""

    name: str
    key: str
    stronger: str
    values: tuple[float, ...]

    def __post_init__(self):
        if self.stronger not in DIRECTIONS:
            raise ValueError(f"assess.grid.axes[{self.name}].stronger must be one of {DIRECTIONS}, "
                             f"got {self.stronger!r}")

    def strongest_first(self, values) -> list[float]:
        return sorted(values, reverse=self.stronger == "higher")

    def is_stronger(self, value: float, than: float) -> bool:
        return value < than if self.stronger == "lower" else value > than


@dataclasses.dataclass(frozen=True, kw_only=True)
class Point:
    """One job: an attack at a setting, with its metrics (``None`` when the job failed)."""

    attack: str
    role: str
    setting: str
    coordinates: dict
    metrics: dict | None
    source: str
    error: str = ""


def weakest_holding(axis: Axis, line: list[tuple[float, object]], threshold: Threshold
                    ) -> tuple[float | None, list[float]]:
    """The weakest value of ``axis`` at which the attack holds and holds at every stronger value.

    Args:
        line: ``(axis value, metric value)`` of the points along the axis.

    Returns:
        The value (``None`` when the strongest setting already fails) and the values that
        hold beyond the first failure, which the monotone rule does not count.
    """
    scores = dict(line)
    weakest, ignored, failed = None, [], False
    for value in axis.strongest_first(scores):
        if threshold.holds(scores[value]):
            if failed:
                ignored.append(value)
            else:
                weakest = value
        else:
            failed = True
    return weakest, ignored


def line_through(points: list[Point], axis: Axis, point: Point) -> list[Point]:
    """The grid points of one attack that differ from ``point`` only along ``axis``."""
    others = {key: value for key, value in point.coordinates.items() if key != axis.key}
    return [candidate for candidate in points if candidate.role == "grid" and candidate.attack == point.attack
            and {key: value for key, value in candidate.coordinates.items() if key != axis.key} == others]


def counts(point: Point, points: list[Point], axes: list[Axis], threshold: Threshold) -> bool:
    """Whether ``point`` holds under the monotone rule: it holds, and so does every stronger
    point on every axis through it (a failed job never holds)."""
    if point.metrics is None or not threshold.holds(point.metrics.get(threshold.metric)):
        return False
    if point.role != "grid":
        return True
    for axis in axes:
        for other in line_through(points, axis, point):
            stronger = axis.is_stronger(other.coordinates[axis.key], point.coordinates[axis.key])
            if stronger and (other.metrics is None or not threshold.holds(other.metrics.get(threshold.metric))):
                return False
    return True


def axis_summary(points: list[Point], axis: Axis, reference: dict, threshold: Threshold) -> dict:
    """Per attack, along ``axis`` through the reference setting: the weakest holding value,
    its job, and the values ignored by the monotone rule."""
    summary = {}
    for attack in sorted({point.attack for point in points}):
        anchor = [point for point in points if point.attack == attack and point.role == "grid"
                  and point.coordinates == reference]
        if not anchor:
            continue
        line = [p for p in line_through(points, axis, anchor[0]) if p.metrics is not None]
        weakest, ignored = weakest_holding(
            axis, [(p.coordinates[axis.key], p.metrics.get(threshold.metric)) for p in line], threshold)
        at = next((p for p in line if p.coordinates[axis.key] == weakest), None)
        summary[attack] = {"weakest": weakest, "ignored": ignored, "point": at,
                           "tested": sorted(p.coordinates[axis.key] for p in line)}
    return summary


def setting_costs(points: list[Point], setting: str) -> dict:
    """Utility, ε, noise, bytes and seconds per round of one setting, averaged over the
    attacks' jobs (each trains the same federation with the same seed)."""
    keys = ("utility.test_accuracy", "privacy.epsilon", "privacy.noise_multiplier", "cost.bytes_per_client",
            "train.seconds_per_round")
    jobs = [point for point in points if point.setting == setting and point.metrics is not None]
    costs = {"sources": [point.source for point in jobs]}
    for key in keys:
        values = [_number(point.metrics.get(key)) for point in jobs]
        values = [value for value in values if value is not None]
        costs[key] = sum(values) / len(values) if values else None
    return costs


def recommend(points: list[Point], axes: list[Axis], threshold: Threshold) -> dict | None:
    """The cheapest setting (DP grid point or the configured stack) at which every attack
    counts as held, in the order of ``_cost_order``.

    Returns its ``setting_costs`` with ``setting`` and ``accuracy_cost`` (non-private accuracy
    minus its own), or ``None`` when no setting holds every attack.
    """
    # An attack that ran nowhere (refused for this model or data) is listed in the report's limits.
    attacks = sorted({point.attack for point in points if point.metrics is not None})
    candidates = []
    for setting in sorted({point.setting for point in points if point.role in ("grid", "stack")}):
        at = {point.attack: point for point in points if point.setting == setting and point.attack in attacks}
        if set(at) == set(attacks) and all(counts(at[attack], points, axes, threshold) for attack in attacks):
            candidates.append({"setting": setting, "role": at[attacks[0]].role, **setting_costs(points, setting)})
    if not candidates:
        return None
    best = min(candidates, key=_cost_order)
    baseline = setting_costs(points, next((p.setting for p in points if p.role == "nonprivate"), ""))
    if baseline["utility.test_accuracy"] is not None and best["utility.test_accuracy"] is not None:
        best["accuracy_cost"] = baseline["utility.test_accuracy"] - best["utility.test_accuracy"]
    else:
        best["accuracy_cost"] = None
    return best


def _cost_order(candidate: dict) -> tuple:
    """Highest accuracy, then fewest bytes; on a tie the smaller ε (the stronger guarantee costs
    nothing more), then seconds per round (timings are noisy, so they decide last)."""
    epsilon = candidate["privacy.epsilon"]
    return (-(candidate["utility.test_accuracy"] or 0.0), candidate["cost.bytes_per_client"] or 0.0,
            math.inf if epsilon is None else epsilon, candidate["train.seconds_per_round"] or 0.0)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
