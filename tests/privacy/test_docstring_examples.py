"""The doctested examples in the privacy and defense modules run and give what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module_name", [
    "fedpriv.privacy.events",
    "fedpriv.privacy.accountant",
    "fedpriv.privacy.calibration",
    "fedpriv.defenses.clipping",
    "fedpriv.defenses.noise",
    "fedpriv.defenses.dp_sgd",
    "fedpriv.defenses.dp_fedavg",
    "fedpriv.defenses.audit_log",
    "fedpriv.defenses.homomorphic",
])
def test_docstring_examples(module_name):
    if module_name.endswith("homomorphic"):
        pytest.importorskip("tenseal", reason="CKKS examples need the optional tenseal extra")
    result = doctest.testmod(importlib.import_module(module_name))
    assert result.attempted > 0
    assert result.failed == 0
