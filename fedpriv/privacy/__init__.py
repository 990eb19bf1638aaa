"""Privacy accounting on the host (DESIGN §4).

Events describe what a mechanism released; accountants (RDP and PLD from
``dp_accounting``) turn events into ``(epsilon, delta)``; calibration inverts that.
Neighbouring relation: add/remove-one with Poisson sampling, everywhere.
"""

from fedpriv.privacy.accountant import ACCOUNTANTS
from fedpriv.privacy.accountant import PLD_VALUE_DISCRETIZATION_INTERVAL
from fedpriv.privacy.accountant import RDP_ORDERS
from fedpriv.privacy.accountant import PrivacyReport
from fedpriv.privacy.accountant import delta_for
from fedpriv.privacy.accountant import epsilon_for
from fedpriv.privacy.accountant import make_accountant
from fedpriv.privacy.accountant import sampled_gaussian_report
from fedpriv.privacy.calibration import calibrate_noise_multiplier
from fedpriv.privacy.events import dp_sgd_event

__all__ = [
    "ACCOUNTANTS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "RDP_ORDERS",
    "PrivacyReport",
    "calibrate_noise_multiplier",
    "delta_for",
    "dp_sgd_event",
    "epsilon_for",
    "make_accountant",
    "sampled_gaussian_report",
]
