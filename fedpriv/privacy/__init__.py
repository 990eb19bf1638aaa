"""Privacy accounting on the host (DESIGN §4).

Events describe what a mechanism released; accountants (RDP and PLD from
``dp_accounting``) turn events into ``(epsilon, delta)``; calibration inverts that; noise
schedules give a noise multiplier per round; the ledger accounts a run round by round
and stops it before it overspends its budget.
Neighbouring relation: add/remove-one with Poisson sampling, everywhere.
"""

from fedpriv.privacy.accountant import ACCOUNTANTS
from fedpriv.privacy.auditing_report import audit_report
from fedpriv.privacy.auditing import AuditResult
from fedpriv.privacy.auditing import clopper_pearson_audit
from fedpriv.privacy.auditing import max_certifiable_epsilon
from fedpriv.privacy.canaries import MisreportedMechanism
from fedpriv.privacy.canaries import craft_input_canaries
from fedpriv.privacy.canaries import make_gradient_canary
from fedpriv.privacy.canaries import run_gradient_canary_trials
from fedpriv.privacy.canaries import run_one_run_gradient_canaries
from fedpriv.privacy.auditing_gaussian_dp import gaussian_dp_audit
from fedpriv.privacy.auditing_gaussian_dp import gaussian_dp_epsilon
from fedpriv.privacy.auditing_one_run import one_run_audit
from fedpriv.privacy.accountant import PLD_VALUE_DISCRETIZATION_INTERVAL
from fedpriv.privacy.accountant import RDP_ORDERS
from fedpriv.privacy.accountant import PrivacyReport
from fedpriv.privacy.accountant import delta_for
from fedpriv.privacy.accountant import epsilon_for
from fedpriv.privacy.accountant import make_accountant
from fedpriv.privacy.accountant import sampled_gaussian_report
from fedpriv.privacy.calibration import affordable_rounds
from fedpriv.privacy.calibration import calibrate_noise_multiplier
from fedpriv.privacy.calibration import calibrate_tiers
from fedpriv.privacy.events import dp_fedavg_event
from fedpriv.privacy.events import dp_sgd_event
from fedpriv.privacy.events import heterogeneous_event
from fedpriv.privacy.events import tier_events
from fedpriv.privacy.ledger import BudgetExhausted
from fedpriv.privacy.ledger import LedgerRound
from fedpriv.privacy.ledger import PrivacyLedger
from fedpriv.privacy.tiered_ledger import TieredLedger
from fedpriv.privacy.schedules import SCHEDULE_KINDS
from fedpriv.privacy.schedules import BudgetAwareSchedule
from fedpriv.privacy.schedules import ConstantSchedule
from fedpriv.privacy.schedules import ExponentialDecaySchedule
from fedpriv.privacy.schedules import LinearDecaySchedule
from fedpriv.privacy.schedules import NoiseSchedule
from fedpriv.privacy.schedules import StepSchedule
from fedpriv.privacy.schedules import make_schedule
from fedpriv.privacy.schedules import schedule_event

__all__ = [
    "AuditResult",
    "MisreportedMechanism",
    "audit_report",
    "clopper_pearson_audit",
    "craft_input_canaries",
    "gaussian_dp_audit",
    "gaussian_dp_epsilon",
    "make_gradient_canary",
    "max_certifiable_epsilon",
    "one_run_audit",
    "run_gradient_canary_trials",
    "run_one_run_gradient_canaries",
    "ACCOUNTANTS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "RDP_ORDERS",
    "SCHEDULE_KINDS",
    "BudgetAwareSchedule",
    "BudgetExhausted",
    "ConstantSchedule",
    "ExponentialDecaySchedule",
    "LedgerRound",
    "LinearDecaySchedule",
    "NoiseSchedule",
    "PrivacyLedger",
    "PrivacyReport",
    "StepSchedule",
    "TieredLedger",
    "affordable_rounds",
    "calibrate_noise_multiplier",
    "calibrate_tiers",
    "delta_for",
    "dp_fedavg_event",
    "dp_sgd_event",
    "epsilon_for",
    "heterogeneous_event",
    "make_accountant",
    "make_schedule",
    "sampled_gaussian_report",
    "schedule_event",
    "tier_events",
]
