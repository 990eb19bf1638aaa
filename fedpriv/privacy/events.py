"""``dp_accounting`` events for the mechanisms fedpriv runs (DESIGN §4).

An event describes *what was released*, independently of how it is accounted: the
accountant (RDP or PLD, see :mod:`fedpriv.privacy.accountant`) turns it into an
``(epsilon, delta)`` statement. Plans in :mod:`fedpriv.defenses` build their event here,
so the mechanism that runs and the mechanism that is accounted for are one object.

Neighbouring relation. All events are meant for the add/remove-one relation
(``dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE``): two datasets are neighbours
when one is the other plus one record. Under it, the clipped sum of per-record
contributions has L2 sensitivity ``l2_clip_norm`` and Poisson subsampling amplifies
privacy as analysed by Mironov et al. (2019). We do not use replace-one: under
replace-one the sensitivity of a clipped sum is ``2 * l2_clip_norm``; dp-accounting
0.6.0's PLD accountant applies that factor 2 (sigma 1 -> epsilon 9.9973 at delta 1e-5)
but its RDP accountant does not (sigma 1 -> 4.7285), so the two accountants would
disagree and RDP would under-report (shared/reference/README.md, "Replace-one pitfall").
"""

from __future__ import annotations

import dp_accounting

from fedpriv.privacy import _validation


def dp_sgd_event(*, noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """The event of ``steps`` Poisson-subsampled Gaussian releases (DP-SGD, DP-FedAvg).

    Builds ``SelfComposed(PoissonSampled(sampling_rate, Gaussian(noise_multiplier)), steps)``.
    With ``sampling_rate == 1`` every record takes part in every step, so there is no
    sampling to amplify privacy and the event is ``SelfComposed(Gaussian, steps)``
    (the two are the same mechanism; leaving the wrapper out keeps the PLD accountant on
    its exact Gaussian path).

    Args:
      noise_multiplier: noise standard deviation divided by the L2 sensitivity of the
        released sum (``>= 0``; 0 means no noise and an infinite epsilon).
      sampling_rate: probability that a record is included in one step, drawn
        independently per record and per step (Poisson sampling), in (0, 1].
      steps: number of releases composed, ``>= 1``.

    Returns:
      A ``dp_accounting.DpEvent``.

    Raises:
      ValueError: if an argument is outside its allowed range; the message names it.

    **Formal guarantees**

    - Bound: none by itself; an accountant turns the event into ``(epsilon, delta)``.
      The event is faithful only if every step clips each record's contribution to L2
      norm ``C``, adds ``N(0, (noise_multiplier * C)^2)`` to every coordinate of the
      clipped SUM, and includes each record independently with probability
      ``sampling_rate`` (Poisson sampling).
    - Relation: add/remove-one record (see the module docstring for why not replace-one).
    - Unit: whatever one clipped contribution is (an example for DP-SGD, a client for
      DP-FedAvg); the plan that builds the event states it.
    - Not protected: shuffling or fixed-size batches (not Poisson sampling) are not
      what this event describes; several contributions of one person count as several
      units; anything released outside these ``steps`` releases.

    Example:
      >>> event = dp_sgd_event(noise_multiplier=1.1, sampling_rate=256 / 60000, steps=10)
      >>> type(event).__name__
      'SelfComposedDpEvent'

    References:
      Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133.
      Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian
      Mechanism", arXiv 1908.10530.
    """
    noise_multiplier = _validation.check_noise_multiplier(noise_multiplier)
    sampling_rate = _validation.check_sampling_rate(sampling_rate)
    steps = _validation.check_steps(steps)
    release: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        release = dp_accounting.PoissonSampledDpEvent(sampling_rate, release)
    return dp_accounting.SelfComposedDpEvent(release, steps)
