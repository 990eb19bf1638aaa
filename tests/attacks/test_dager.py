"""DAGER: exact notes from the span of the first attention layer's update (batch 1 and batches)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedpriv.attacks.dager import DagerConfig, input_span, recover_notes
from fedpriv.attacks.protocol import PublicKnowledge, TokenRecoveryResult
from fedpriv.data.notes import NotesConfig, make_notes_cohort
from fedpriv.models.mlp import mlp
from fedpriv.models.transformer import transformer
from fedpriv.public.clinical_words import PAD_ID, clinical_vocabulary
from tests.attacks.helpers import observe

MAX_LEN = 12
WIDTH = 64


def _setting(num_layers: int):
    vocabulary = clinical_vocabulary()
    cohort = make_notes_cohort(NotesConfig(num_records=40, num_sites=2, max_len=MAX_LEN), np.random.default_rng(5))
    model = transformer((MAX_LEN,), 8, vocabulary_size=vocabulary.size, embedding_dim=WIDTH, num_heads=2,
                        num_layers=num_layers, mlp_dim=64)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, MAX_LEN), jnp.int32))
    return cohort, model, params


@pytest.fixture(scope="module")
def setting():
    """One block: a batch of one needs only the first (and it compiles faster)."""
    return _setting(num_layers=1)


@pytest.fixture(scope="module")
def three_notes(setting):
    """FedSGD, batch 1, three hospitals; the second note is cut to 7 tokens."""
    cohort, model, params = setting
    x = cohort.tokens[:3].copy().reshape(3, 1, 1, MAX_LEN)
    x[1, ..., 7:] = PAD_ID  # a shorter note: its length is read off too
    return x, observe(model, params, x, cohort.labels[:3].reshape(3, 1, 1))


def test_batch_of_one_is_recovered_exactly(setting, three_notes):
    cohort, model, params = setting
    x, observation = three_notes
    attack = DagerConfig().make(model, PublicKnowledge(compilation=None))
    result = attack(observation, jax.random.key(0), victims=[0, 1, 2])

    assert isinstance(result, TokenRecoveryResult)
    np.testing.assert_array_equal(result.notes.inputs, x)  # every token of every note, in place
    assert result.notes.objective.max() < 1e-5
    for bag, note in zip(result.bags, x):
        assert bag.tolist() == sorted(set(note.ravel().tolist()) - {PAD_ID})


def test_the_span_has_the_rank_of_the_note(three_notes):
    x, observation = three_notes
    update = observation.update_of(1)["block_0"]
    stacked = np.concatenate([np.asarray(update[name]["kernel"]).reshape(WIDTH, -1)
                              for name in ("query", "key", "value")], 1)
    span = input_span(stacked)
    assert span.basis.shape == (WIDTH, 7) and not span.saturated  # seven real tokens
    assert 1e-5 < span.threshold < 1e-2  # between float32's floor and a random vector's distance
    noise = np.random.default_rng(0).normal(0, 1e-3, stacked.shape)
    assert input_span(stacked + noise, noise_stddev=1e-3).basis.shape[1] <= 7
    assert input_span(noise).threshold > 0.5  # pure noise: no gap, the test passes everything


@pytest.mark.slow  # 20 s on 2 busy cores
def test_batch_of_four_notes_is_recovered_exactly():
    cohort, model, params = _setting(num_layers=2)
    x = cohort.tokens[:4].reshape(1, 1, 4, MAX_LEN)
    observation = observe(model, params, x, cohort.labels[:4].reshape(1, 1, 4))
    notes = recover_notes(observation, model, DagerConfig(), victims=[0])
    # Three notes share a template and differ in one word; the fourth differs everywhere.
    assert sorted(map(tuple, notes.inputs[0, 0].tolist())) == sorted(map(tuple, x[0, 0].tolist()))
    assert notes.objective[0] < 1e-4
    assert sorted(notes.labels[0, 0].tolist()) == sorted(cohort.labels[:4].tolist())


def test_bad_input_is_refused_before_compute(setting, three_notes):
    cohort, model, params = setting
    _, observation = three_notes
    with pytest.raises(ValueError, match="only an aggregate"):
        recover_notes(dataclasses.replace(observation, aggregated=True), model, DagerConfig(), victims=[0])
    multi_step = dataclasses.replace(observation, metadata=dataclasses.replace(observation.metadata, local_steps=2))
    with pytest.raises(ValueError, match="local_steps 1"):
        recover_notes(multi_step, model, DagerConfig(), victims=[0])
    batch = dataclasses.replace(observation, metadata=dataclasses.replace(observation.metadata, batch_size=2))
    with pytest.raises(ValueError, match="attack.config.second_block: the model has no parameter 'block_9/"):
        recover_notes(batch, model, DagerConfig(second_block="block_9"), victims=[0])
    dense = mlp((MAX_LEN,), 8, hidden_sizes=(16,))
    dense_params = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, p.dtype),
                                          jax.eval_shape(dense.init, jax.random.key(0), jnp.zeros((1, MAX_LEN))))
    dense_observation = dataclasses.replace(
        observation, params=dense_params, metadata=dataclasses.replace(observation.metadata, num_classes=8),
        updates=jax.tree_util.tree_map(lambda p: jnp.zeros((3, *p.shape)), dense_params))
    with pytest.raises(ValueError, match="DAGER needs a token table"):
        recover_notes(dense_observation, dense, DagerConfig(), victims=[0])
    with pytest.raises(ValueError, match="attack.config.search_sweeps must be an integer >= 1, got 0"):
        DagerConfig(search_sweeps=0)
