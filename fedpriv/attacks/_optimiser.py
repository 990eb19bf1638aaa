"""The optimisation loop every gradient-matching attack shares (issue #10, DESIGN §5).

An attack writes one ``step(state, candidate, shared) -> (state, value)``: ``state`` is
``(variables, optimizer_state)`` of one candidate (a victim and restart), ``candidate``
holds what differs between candidates (labels, observed update, ...) and ``shared`` what
does not (the model's params). How the candidates and the iterations are compiled is an
``AttackCompilation`` choice and never changes the numbers beyond float tolerance:

- ``batching="vmap"`` lifts the step over a leading candidate axis, ``"map"`` uses
  ``lax.map``, ``"loop"`` optimises one candidate at a time with the same program;
- ``loop="host"`` calls one jitted step from Python, ``loop="scan"`` runs
  ``scan_chunk`` steps inside ``lax.scan``.

On XLA's CPU backend convolution gradients are several times slower inside ``scan`` and
under ``vmap`` (jax-ml/jax #12868), hence the choice. Programs are built once per attack
setting by the attack's own cached ``_compiled_programs``; ``make_runner`` jits them.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedpriv.progress import progress_bar


def _batched(step, batching: str):
    """``step(state, candidate, shared)`` lifted over a leading candidate axis."""
    if batching == "vmap":
        return jax.vmap(step, in_axes=(0, 0, None))
    if batching == "map":
        return lambda state, candidate, shared: jax.lax.map(lambda a: step(a[0], a[1], shared), (state, candidate))
    return step


def make_runner(step, compilation) -> types.SimpleNamespace:
    """The jitted programs of ``step``: ``single_iteration`` and ``run_chunk`` (``lax.scan``)."""
    batched = _batched(step, compilation.batching)

    def run_iterations(state, candidate, shared, count):
        return jax.lax.scan(lambda carry, _: batched(carry, candidate, shared), state, None, length=count)

    return types.SimpleNamespace(single_iteration=jax.jit(batched),
                                 run_chunk=jax.jit(run_iterations, static_argnums=3))


# With a progress bar the host loop waits for its steps every this many: JAX dispatches
# asynchronously, so a bar fed at dispatch would run ahead of the work. Without a bar
# nothing waits.
PROGRESS_EVERY = 10


def _optimise(runner, state, candidate, shared, iterations: int, compilation, advance=None):
    """Runs ``iterations`` steps as compiled; returns the final state and the values ``[T, ...]``.

    ``advance(steps)``, when given, is told of the steps done (after they are done).
    """
    values = []
    if compilation.loop == "host":
        for index in range(iterations):
            state, value = runner.single_iteration(state, candidate, shared)
            values.append(value)
            if advance is not None and ((index + 1) % PROGRESS_EVERY == 0 or index + 1 == iterations):
                jax.block_until_ready(value)
                advance(index % PROGRESS_EVERY + 1)
        return state, jnp.stack(values)
    done = 0
    while done < iterations:
        count = min(compilation.scan_chunk, iterations - done)
        state, chunk = runner.run_chunk(state, candidate, shared, count)
        values.append(chunk)
        done += count
        if advance is not None:
            jax.block_until_ready(chunk)
            advance(count)
    return state, jnp.concatenate(values)


def run_candidates(runner, init_state: Callable, start, candidate, shared, iterations: int, compilation):
    """Optimises every candidate from ``start`` (leading candidate axis on ``start`` and
    ``candidate``); ``init_state(variables)`` is the optimizer's initial state of one.

    Returns the final variables ``[N, ...]`` and the values ``[iterations, N]``.
    """
    count = jax.tree_util.tree_leaves(start)[0].shape[0]
    with progress_bar(f"attack ({count} candidates)", total=iterations * count) as advance:
        if compilation.batching != "loop":
            per_candidate = None if advance is None else (lambda steps: advance(steps * count))
            state, values = _optimise(runner, (start, jax.vmap(init_state)(start)), candidate, shared, iterations,
                                      compilation, per_candidate)
            return state[0], values
        results = []
        for index in range(count):
            take = functools.partial(jax.tree_util.tree_map, lambda a: a[index])  # noqa: B023
            variables = take(start)
            state, values = _optimise(runner, (variables, init_state(variables)), take(candidate), shared,
                                      iterations, compilation, advance)
            results.append((state[0], values))
    final = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[r[0] for r in results])
    return final, jnp.stack([r[1] for r in results], axis=1)
