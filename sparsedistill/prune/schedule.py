"""The cubic sparsity schedule of Zhu & Gupta (2017), "To prune, or not to prune"."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from .checks import check_int

__all__ = ["cubic_sparsity_schedule", "CubicSparsitySchedule"]


def _check_schedule(initial_sparsity, final_sparsity, start_step, end_step, frequency) -> None:
    for name, s in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= s <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {s!r}")
    check_int("start_step", start_step)
    check_int("end_step", end_step)
    if end_step <= start_step:
        raise ValueError(f"end_step ({end_step}) must be greater than start_step ({start_step})")
    check_int("frequency", frequency, low=1)


def cubic_sparsity_schedule(step: int, initial_sparsity: float, final_sparsity: float,
                            start_step: int, end_step: int, frequency: int = 1) -> float:
    """Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune":
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end_step - t0))**3 with t0 = start_step.
    Held at s_i before start_step and at s_f from end_step on; in between it only changes every
    `frequency` steps (t is floored to start_step + a multiple of frequency)."""
    _check_schedule(initial_sparsity, final_sparsity, start_step, end_step, frequency)
    step = check_int("step", step)
    if step < start_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    t = start_step + (step - start_step) // frequency * frequency
    progress = (t - start_step) / (end_step - start_step)
    # s_i + (s_f - s_i) * (1 - (1 - p)^3): the same value, exact at p = 0 and, being built from
    # monotone float ops and clamped, monotone across the start and end boundaries
    s = initial_sparsity + (final_sparsity - initial_sparsity) * (1.0 - (1.0 - progress) ** 3)
    low, high = sorted((float(initial_sparsity), float(final_sparsity)))
    return min(max(float(s), low), high)


@dataclass(frozen=True)
class CubicSparsitySchedule:
    """cubic_sparsity_schedule with its arguments bound (validated on construction):
    `schedule(step)` gives the target sparsity at `step`."""

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int = 1

    def __post_init__(self) -> None:
        _check_schedule(self.initial_sparsity, self.final_sparsity, self.start_step,
                        self.end_step, self.frequency)

    def __call__(self, step: int) -> float:
        return cubic_sparsity_schedule(step, self.initial_sparsity, self.final_sparsity,
                                       self.start_step, self.end_step, self.frequency)
