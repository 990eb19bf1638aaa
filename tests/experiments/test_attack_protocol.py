"""Adding an attack is one module and one YAML: a toy attack defined here runs through the
scenario by the same protocol as the project's own (issue #10)."""

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.build import build_scenario
from fedpriv import metrics
from fedpriv.attacks.protocol import Attack, PublicKnowledge, SideKnowledge
from fedpriv.scenario import run_scenario
from fedpriv.typing import Model, Observation, Reconstruction
from tests.experiments.conftest import compose_smoke


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublicMeanConfig:
    """Guesses every record as the mean public image, the best guess without the update."""

    kind: ClassVar[str] = "images"
    needs_public_images: ClassVar[bool] = True
    shrink: float = 1.0

    def make(self, model: Model, public: PublicKnowledge) -> Attack:
        guess = self.shrink * np.mean(public.images, axis=0)

        def recover(observation: Observation, key, victims, side: SideKnowledge) -> Reconstruction:
            steps, batch = observation.metadata.local_steps, observation.metadata.batch_size
            inputs = np.broadcast_to(guess, (len(victims), steps, batch, *guess.shape)).copy()
            labels = np.full((len(victims), steps, batch), -1, np.int32)
            return Reconstruction(inputs=inputs, labels=labels, objective=np.zeros(len(victims), np.float32),
                                  trace=np.zeros((len(victims), 1, 0), np.float32), victims=victims)

        return Attack(kind=self.kind, model=model, iterations=1, recover=recover)


def _toy_config(attack_node: dict):
    cfg = compose_smoke({"attack": "none"})
    cfg.attack = OmegaConf.create({"config": attack_node, "observe_round": 0, "num_victims": 2,
                                   "public_records": 16})
    return cfg


def test_a_toy_attack_runs_through_the_scenario_and_is_scored_by_its_kind(tmp_path):
    # What its YAML would hold: the target and its fields.
    node = {"_target_": f"{__name__}.PublicMeanConfig", "shrink": 0.5}
    result = run_scenario(build_scenario(_toy_config(node), str(tmp_path)))
    scores = result.metrics
    assert scores["attack.records_scored"] == 2 and scores["attack.records_missing"] == 0
    # Independent oracle: the scenario's scored pairs, re-scored directly.
    truth, reconstructed = result.truth.reshape(-1, *result.truth.shape[2:]), result.reconstructed
    reconstructed = reconstructed.reshape(truth.shape)
    np.testing.assert_allclose(reconstructed, reconstructed[:1].repeat(len(truth), 0))
    assert scores["attack.psnr_db"] == pytest.approx(float(np.mean(metrics.psnr(reconstructed, truth))), rel=1e-5)
    assert scores["attack.recognisable_share"] == 0.0
    # The baseline is the public mean itself (the toy's guess before shrinking): scored on the
    # same records, and the attack's shrunken guess loses to it.
    public_mean = reconstructed / 0.5
    assert scores["attack.baseline"] == "public_mean"
    assert scores["attack.baseline_psnr_db"] == pytest.approx(float(np.mean(metrics.psnr(public_mean, truth))),
                                                              rel=1e-5)
    assert scores["attack.psnr_gain_db"] == pytest.approx(scores["attack.psnr_db"] - scores["attack.baseline_psnr_db"])
    assert scores["attack.psnr_gain_db"] < 0


def test_an_object_without_the_protocol_is_refused_before_compute(tmp_path):
    node = {"_target_": "fedpriv.attacks.image_prior.ImagePriorConfig"}
    with pytest.raises(ValueError, match=r"attack\.config must be an attack config with a `kind`"):
        build_scenario(_toy_config(node), str(tmp_path))
