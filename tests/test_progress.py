"""Progress bars appear only where someone watches, and never change the work (issue #12)."""

import contextlib

import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks import _optimiser
from fedpriv.attacks._optimiser import make_runner, run_candidates
from fedpriv.attacks.inverting_gradients import AttackCompilation
from fedpriv.progress import progress_bar, progress_enabled


def test_the_setting_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDPRIV_PROGRESS", "0")
    assert not progress_enabled()
    with progress_bar("x", 3) as advance:
        assert advance is None
    monkeypatch.setenv("FEDPRIV_PROGRESS", "1")
    assert progress_enabled()
    monkeypatch.setenv("FEDPRIV_PROGRESS", "yes")
    with pytest.raises(ValueError, match=r"FEDPRIV_PROGRESS must be one of \('auto', '0', '1'\), got 'yes'"):
        progress_enabled()


@pytest.mark.parametrize("loop", ["host", "scan"])
def test_a_drawn_bar_counts_every_step_and_leaves_the_optimisation_unchanged(monkeypatch, loop):
    def step(state, target, shared):  # gradient descent on |x - target|^2 / 2
        x, count = state
        return (x - 0.5 * (x - target), count + 1), jnp.sum((x - target) ** 2)

    reported = []

    @contextlib.contextmanager
    def recording_bar(description, total):
        reported.append([description, total, 0])
        yield lambda steps: reported[-1].__setitem__(2, reported[-1][2] + steps)

    compilation = AttackCompilation(loop=loop, scan_chunk=4, batching="vmap")
    runner = make_runner(step, compilation)
    start, target = jnp.zeros((2, 3)), jnp.ones((2, 3))
    monkeypatch.setenv("FEDPRIV_PROGRESS", "0")
    quiet = run_candidates(runner, lambda x: 0, start, target, None, 13, compilation)
    monkeypatch.setattr(_optimiser, "progress_bar", recording_bar)
    drawn = run_candidates(runner, lambda x: 0, start, target, None, 13, compilation)
    assert reported == [["attack (2 candidates)", 26, 26]]
    np.testing.assert_array_equal(quiet[0], drawn[0])
    np.testing.assert_array_equal(quiet[1], drawn[1])
