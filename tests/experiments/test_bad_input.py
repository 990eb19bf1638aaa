"""Bad input fails before any compute, with a message naming the field or file and what is allowed.

Config values are checked by ``build_scenario`` (the typed configs validate themselves);
what depends on the data (hospital sizes, the model's input shape, the files) is checked
by ``run_scenario`` after loading and before training — the ``no_compute`` fixture makes
training and the attack fail the test if they start.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from hydra.errors import HydraException, MissingConfigException

from experiments.build import build_scenario
from experiments.run import config_error_line
from fedpriv.scenario import run_scenario

from .conftest import compose_config, compose_smoke, group_options, groups


def root_cause(error: BaseException) -> BaseException:
    """Hydra wraps what a ``_target_`` raises in an InstantiationException; the ValueError is its cause."""
    while not isinstance(error, ValueError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def expect_build_error(changes: dict[str, str], *patterns: str) -> str:
    """Asserts ``build_scenario`` (no data, no compute) raises a ValueError matching every pattern."""
    cfg = compose_smoke(changes)
    with pytest.raises(Exception) as caught:
        build_scenario(cfg)
    return check_message(caught.value, patterns)


def expect_run_error(changes: dict[str, str], *patterns: str) -> str:
    """Asserts the scenario fails after building, before training (see ``no_compute``)."""
    scenario = build_scenario(compose_smoke(changes))
    with pytest.raises(ValueError) as caught:
        run_scenario(scenario)
    return check_message(caught.value, patterns)


def check_message(error: BaseException, patterns) -> str:
    cause = root_cause(error)
    assert isinstance(cause, ValueError), f"expected a ValueError, got {error!r}"
    message = str(cause)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


def test_a_config_error_is_one_line_naming_the_field():
    cfg = compose_smoke({"attack.config.iterations": "-3"})
    with pytest.raises(Exception) as caught:
        build_scenario(cfg)
    assert config_error_line(caught.value) == "error: attack.config: iterations must be an integer >= 1, got -3"
    assert config_error_line(RuntimeError("a crash, not a config error")) is None


# -- config groups and values ------------------------------------------------------------------

@pytest.mark.parametrize("group", [g for g in groups() if g != "experiment"])
def test_unknown_option_lists_the_allowed_ones(group):
    with pytest.raises(MissingConfigException) as caught:
        compose_config([f"{group}=nope"])
    message = str(caught.value)
    assert f"Could not find '{group}/nope'" in message
    for option in group_options(group):
        assert re.search(rf"^\s+{option}$", message, re.MULTILINE), f"{option} not listed in {message!r}"


def test_unknown_key_is_refused_when_composing():
    with pytest.raises(HydraException, match=r"Could not override 'algorithm\.roundz'"):
        compose_config(["algorithm.roundz=3"])


@pytest.mark.parametrize("epsilon", ["0", "-1"])
def test_epsilon_must_be_positive(epsilon):
    expect_build_error({"defense": "dp_sgd", "privacy.target_epsilon": epsilon},
                       r"target_epsilon must be a finite number > 0", rf"got {float(epsilon)}")


@pytest.mark.parametrize("defense", ["none", "dp_sgd"])
@pytest.mark.parametrize("delta", ["1", "1.5", "0", "-1e-5"])
def test_delta_must_be_in_the_open_unit_interval(defense, delta):
    expect_build_error({"defense": defense, "privacy.delta": delta},
                       re.escape("delta must be in the open interval (0, 1)"), rf"got {re.escape(repr(float(delta)))}")


@pytest.mark.parametrize("clip", ["0", "-1"])
def test_clip_norm_must_be_positive(clip):
    expect_build_error({"defense": "dp_sgd", "defense.l2_clip_norm": clip},
                       r"l2_clip_norm must be a finite number > 0", rf"got {float(clip)}")


def test_noise_multiplier_must_be_non_negative():
    expect_build_error({"defense": "dp_sgd", "defense.noise_multiplier": "-0.5"},
                       r"noise_multiplier must be a finite number >= 0", r"got -0\.5")


def test_unknown_accountant_and_defense_component():
    expect_build_error({"defense": "dp_sgd", "privacy.accountant": "moments"},
                       r"accountant must be one of \('rdp', 'pld'\)", r"'moments'")
    expect_build_error({"+defense.firewall": "true"}, r"defense has unknown key\(s\) \['firewall'\]", r"allowed")


def test_bad_defense_settings_fail_before_compute():
    expect_build_error({"defense": "secure_aggregation", "defense.protocol.threshold_fraction": "0"},
                       r"threshold_fraction must be in \(0, 1\]", r"got 0")
    expect_build_error({"defense": "homomorphic", "defense.protocol.ckks.poly_modulus_degree": "1000"},
                       r"poly_modulus_degree", r"1000")
    expect_build_error({"defense": "tiered_dp_sgd", "defense.tiers.budgets.general": "-1"},
                       r"budgets\['general'\]", r"-1")
    expect_build_error({"defense": "dp_fedavg", "defense.dp_fedavg.l2_clip_norm": "0"},
                       r"l2_clip_norm", r"0")
    expect_build_error({"defense": "local_dp", "defense.local_dp.epsilon": "0"}, r"epsilon", r"0")
    expect_build_error({"defense": "top_k", "defense.compression.keep_fraction": "1.5"}, r"keep_fraction", r"1.5")


def test_attack_that_does_not_fit_the_data_fails_before_compute():
    expect_build_error({"attack": "code_recovery"}, r"does not fit data.cohort.kind 'phantom'", r"CodeRecoveryConfig")


def test_observe_round_must_be_a_round_that_exists():
    expect_build_error({"attack.observe_round": "2"}, re.escape("observe_round must be in [-2, 2)"), r"got 2")


def test_idlg_against_fedavg_is_refused_before_training():
    # iDLG reads one label per update: with batches it would fail only after the whole run.
    expect_build_error({"algorithm": "fedavg"}, r"label_strategy 'idlg' needs one local step of batch 1",
                       r"local_steps=4, batch_size=4", r"attack\.config\.label_strategy=known")


# -- limits that depend on the data ------------------------------------------------------------

def test_more_clients_than_records(no_compute):
    # 32 records, a quarter held out for testing: 24 to share.
    expect_run_error({"data.partition.num_clients": "40"}, r"num_clients must be <= the number of records \(24\)",
                     r"got 40")


def test_batch_larger_than_the_smallest_hospital(no_compute):
    message = expect_run_error({"algorithm": "fedavg", "attack": "none", "algorithm.batch_size": "11"},
                               r"batch_size 11 is larger than the smallest hospital \((\d+) records\)",
                               r"algorithm\.batch_size")
    assert int(re.search(r"\((\d+) records\)", message).group(1)) < 11


def test_dp_batch_larger_than_the_mean_hospital(no_compute):
    expect_run_error({"defense": "dp_sgd", "attack": "none", "algorithm.batch_size": "13"},
                     r"batch_size 13 exceeds the mean hospital size 12\.0", r"sampling rate would be above 1")


def test_image_size_the_model_cannot_take(no_compute):
    # Six ResNet stages halve 16 pixels five times: they need 2**5 = 32.
    expect_run_error({"model": "resnet", "++model.stage_widths": "[2,2,2,2,2,2]"},
                     re.escape("model 'resnet' cannot take inputs of shape (16, 16, 1)"), r"at least 32")


def test_image_size_below_what_the_cohorts_allow():
    expect_build_error({"model": "convnet", "data.cohort.image_size": "8"},
                       r"data\.cohort\.image_size must be an integer >= 16", r"got 8")


def test_a_table_cannot_be_split_by_scanner_site():
    expect_build_error({"data": "tabular_ehr", "model": "mlp", "attack": "tableak", "data.partition.scheme": "by_site"},
                       r"data\.partition\.scheme 'by_site'", "iid, dirichlet or quantity_skew")


def test_unknown_cohort_kind():
    expect_build_error({"data.cohort.kind": "mri"}, r"data\.cohort\.kind must be one of", r"'dicom_folder'",
                       r"got 'mri'")


# -- files -------------------------------------------------------------------------------------

def test_dicom_folder_needs_a_path():
    expect_build_error({"data": "dicom_folder"}, r"data\.cohort\.path is required for kind 'dicom_folder'")


def test_missing_dicom_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    expect_build_error({"data": "dicom_folder", "data.cohort.path": str(missing)},
                       rf"data\.cohort\.path '{re.escape(str(missing))}' does not exist")


def test_dicom_folder_without_dicom_files(tmp_path, no_compute):
    (tmp_path / "cyst").mkdir()
    (tmp_path / "cyst" / "README").write_text("no images here")
    expect_run_error({"data": "dicom_folder", "data.cohort.path": str(tmp_path)},
                     rf"DICOM folder {re.escape(str(tmp_path))} holds no readable DICOM image")


def test_corrupt_dicom_file_is_named(tmp_path, dicom_folder, no_compute):
    folder = tmp_path / "hospital"
    shutil.copytree(dicom_folder, folder)
    corrupt = folder / "nodule" / "slice_99.dcm"
    corrupt.write_bytes(b"\x00" * 64 + b"not a dicom file" * 20)
    expect_run_error({"data": "dicom_folder", "data.cohort.path": str(folder)},
                     rf"{re.escape(str(corrupt))} is not a valid DICOM file")


def test_missing_npz(tmp_path):
    missing = tmp_path / "organamnist.npz"
    expect_build_error({"data": "medmnist_npz", "data.cohort.path": str(missing)},
                       rf"data\.cohort\.path '{re.escape(str(missing))}' does not exist")


def test_garbage_npz(tmp_path, no_compute):
    garbage = tmp_path / "organamnist.npz"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_run_error({"data": "medmnist_npz", "data.cohort.path": str(garbage)},
                     rf"MedMNIST file {re.escape(str(garbage))} is not a readable npz archive")


def test_npz_without_the_train_split(tmp_path, no_compute):
    path = tmp_path / "valonly.npz"
    np.savez(path, val_images=np.zeros((4, 28, 28), np.uint8), val_labels=np.zeros((4, 1), np.int64))
    expect_run_error({"data": "medmnist_npz", "data.cohort.path": str(path)},
                     r"lacks key\(s\) \['train_images', 'train_labels'\]", r"it holds \['val_images', 'val_labels'\]")


def test_analytic_attack_on_a_model_without_that_layer_fails_before_training(no_compute):
    expect_run_error({"attack": "analytic", "model": "lenet"}, r"attack\.config\.layer 'dense_0'", r"lenet")


def test_tiers_without_dp_sgd_or_with_stop_on_budget_are_refused(no_compute):
    expect_build_error({"defense": "tiered_dp_sgd", "defense.dp_sgd": "false"}, r"defense\.tiers needs", r"dp_sgd")
    expect_run_error({"defense": "tiered_dp_sgd", "privacy.stop_on_budget": "true"}, r"stop_on_budget",
                     r"'tiered_dp_sgd'")


@pytest.mark.parametrize("changes,names", [
    ({"defense": "dp_fedavg", "defense.screening": "{_target_:fedpriv.defenses.anomaly.AnomalyConfig}"},
     (r"'dp_fedavg'", r"defense\.screening")),
    ({"defense": "dp_fedavg", "algorithm.clients_per_round": "1"}, (r"'dp_fedavg'", r"clients_per_round")),
    ({"defense": "dp_sgd", "algorithm.weighting": "examples"}, (r"'dp_sgd'", r"weighting='examples'")),
    ({"defense": "none", "privacy.stop_on_budget": "true"}, (r"'none'", r"stop_on_budget")),
])
def test_a_privacy_plan_refuses_what_it_does_not_compose_with_before_training(no_compute, changes, names):
    expect_run_error({"attack": "none", **changes}, r"does not compose with", *names)
