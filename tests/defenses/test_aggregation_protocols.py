"""Secure aggregation and CKKS inside a federated round: same model, only the sum observed."""

import jax
import numpy as np
import pytest

from fedpriv.defenses.aggregation_protocols import HomomorphicProtocol, SecureAggregationProtocol
from fedpriv.defenses.server_stages import PlaintextSum, ProtocolSum, ServerPipeline
from fedpriv.models.base import from_linen
from tests.federated.conftest import TinyConvNet, random_client_data, run_one_round


def _round(model, data, protocol):
    pipeline = ServerPipeline(protocol=PlaintextSum() if protocol is None else ProtocolSum(protocol=protocol))
    outcome = run_one_round(model, data, pipeline=pipeline, backend="loop")
    return outcome.state, outcome.observed, outcome.stats


@pytest.fixture(scope="module")
def tiny_conv_model():
    return from_linen(TinyConvNet(), input_shape=(8, 8, 1), num_classes=3, head_names=("head",), name="tiny_conv")


@pytest.fixture(scope="module")
def data():
    return random_client_data(np.random.default_rng(0), clients=4, steps=1, batch=4, input_shape=(8, 8, 1),
                              num_classes=3, absent_clients=(3,))


@pytest.mark.parametrize("make_protocol", [
    lambda: SecureAggregationProtocol(clip_range=4.0),
    lambda: HomomorphicProtocol(),
], ids=["secure_aggregation", "ckks"])
def test_protocol_round_matches_plaintext_and_shows_only_the_mean(tiny_conv_model, data, make_protocol):
    plain_state, plain_observed, _ = _round(tiny_conv_model, data, None)
    protocol = make_protocol()
    if isinstance(protocol, HomomorphicProtocol):
        pytest.importorskip("tenseal", reason="CKKS needs the optional tenseal extra")
    state, observed, aux = _round(tiny_conv_model, data, protocol)
    for a, b in zip(jax.tree_util.tree_leaves(plain_state.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for mean, per_client in zip(jax.tree_util.tree_leaves(observed), jax.tree_util.tree_leaves(plain_observed)):
        assert mean.shape == (1, *per_client.shape[1:])
        np.testing.assert_allclose(mean[0], np.asarray(per_client)[:3].mean(axis=0), atol=1e-5)
    report = aux["protocol"]
    assert report["bytes_per_client"] > report["plaintext_bytes_per_client"] > 0


def test_secure_aggregation_refuses_a_round_with_one_sender():
    with pytest.raises(ValueError, match="at least 2 senders"):
        SecureAggregationProtocol().aggregate(np.zeros((1, 3), np.float32))


def test_bad_protocol_settings_fail_when_built():
    with pytest.raises(ValueError, match="threshold_fraction"):
        SecureAggregationProtocol(threshold_fraction=0.0)
    with pytest.raises(ValueError, match="fixed_point_scale"):
        SecureAggregationProtocol(clip_range=1e6, fixed_point_scale=2.0**30)
