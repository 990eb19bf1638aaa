"""Every option of every config group composes, and runs a tiny smoke config end to end.

Options are discovered from the ``conf/`` folders, so a new YAML file is covered without
touching this file. One smoke run per option (not the cross product): the option is put
into the smoke config, everything else stays at the smoke defaults (MLP, FedSGD, no
defense, Inverting Gradients with iDLG labels, impl=auto). Identical configs share one run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.build import build_scenario
from fedpriv.data import CohortSource, load_cohort
from fedpriv.keys import numpy_generator, run_keys

from .conftest import (CONF, DICOM_CLASSES, DICOM_COPIES, NPZ_TRAIN_RECORDS, SMOKE, compose_config, compose_smoke,
                       group_options, groups, run_smoke)

EXPECTED_GROUPS = ["algorithm", "attack", "data", "defense", "experiment", "impl", "model", "privacy"]
RUN_GROUPS = [group for group in EXPECTED_GROUPS if group != "experiment"]  # presets of sweeps: compose only

EHR_SMOKE = {"data": "ehr", "model": "embedding_bag", "attack": "code_recovery", "data.cohort.num_records": "200",
             "data.cohort.num_sites": "2"}
NOTES_SMOKE = {"data": "notes", "model": "transformer", "attack": "token_recovery", "data.cohort.num_records": "64",
               "data.cohort.num_sites": "2", "data.cohort.max_length": "16"}
TABULAR_SMOKE = {"data": "tabular_ehr", "attack": "tableak", "attack.config.restarts": "2"}

#: What a preset needs on top of the smoke config to be tiny (or valid) — never to pass.
PRESET_CHANGES = {
    # The ConvNet trains here without the attack: compiling the attack's gradient of its
    # gradient takes XLA's CPU backend ~10 s. The attack against the ConvNet (the default
    # model) runs through the CLI instead, in the background (test_run_cli.py).
    ("model", "convnet"): {"model.width": "2", "attack": "none"},
    ("model", "resnet"): {"++model.stage_widths": "[2]"},
    # iDLG is exact only for one step of batch 1; FedAvg batches need the labels as side knowledge.
    ("algorithm", "fedavg"): {"algorithm.local_steps": "2", "algorithm.batch_size": "2",
                              "attack.config.label_strategy": "known"},
    # The head is private: labels cannot be read off it.
    ("defense", "partitioning"): {"attack.config.label_strategy": "known"},
    # Token cohorts take token models and token attacks; sites are the hospitals. Each trio
    # (data, model, attack) is one config, so the three presets share one smoke run.
    **{(group, option): EHR_SMOKE for group, option in (("data", "ehr"), ("model", "embedding_bag"),
                                                      ("attack", "code_recovery"))},
    **{(group, option): NOTES_SMOKE for group, option in (("data", "notes"), ("model", "transformer"),
                                                        ("attack", "token_recovery"))},
    # Defenses that leave the per-client updates visible run without the attack here (their
    # effect on attacks is tested in test_defense_runs.py); protocols and partitioning keep it.
    **{("defense", option): {"attack": "none"} for option in
       ("dp_sgd", "tiered_dp_sgd", "audited_dp_sgd", "dp_fedavg", "local_dp", "top_k", "quantization",
        "anomaly_screening", "robust_median", "model_screening")},
    ("attack", "dager"): {**NOTES_SMOKE, "attack": "dager"},
    # Tables take the tabular attack (and the reverse); two restarts keep the smoke short.
    **{(group, option): TABULAR_SMOKE for group, option in (("data", "tabular_ehr"), ("attack", "tableak"))},
    **{("data", option): {"attack": "tableak", "attack.config.restarts": "2"}
       for option in ("breast_cancer", "tabular_csv")},
    # DLG reads the labels jointly; the imprint needs bins for a batch.
    ("attack", "imprint"): {"attack.config.bins": "16"},
}


def config_defaults() -> dict[str, str | None]:
    """The option config.yaml picks in each group."""
    chosen = {}
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, str):
            continue  # _self_
        ((group, option),) = entry.items()
        chosen[group] = option
    return chosen


def preset_changes(group: str, option: str, data_paths: dict) -> dict[str, str]:
    """The smoke changes that select ``group=option`` (none for the smoke default itself)."""
    smoke_default = SMOKE.get(group, config_defaults().get(group))
    changes = {} if option == smoke_default else {group: option}
    if group == "data":
        changes.update(data_paths.get(option, {}))
    changes.update(PRESET_CHANGES.get((group, option), {}))
    return changes


ALL_OPTIONS = [(group, option) for group in EXPECTED_GROUPS for option in group_options(group)]
RUN_OPTIONS = [(group, option) for group, option in ALL_OPTIONS if group in RUN_GROUPS]


def test_the_groups_and_options_are_discovered():
    assert groups() == EXPECTED_GROUPS
    assert group_options("data") == ["breast_cancer", "ct_phantom", "ct_slice", "dicom_folder", "ehr", "medmnist_npz",
                                     "notes", "tabular_csv", "tabular_ehr"]
    assert group_options("model") == ["convnet", "convnet_plain", "embedding_bag", "lenet", "mlp", "resnet",
                                      "transformer"]
    assert {"fedsgd", "fedavg"} <= set(group_options("algorithm"))
    assert {"none", "dp_sgd"} <= set(group_options("defense"))
    assert {"inverting_gradients", "none"} <= set(group_options("attack"))
    assert {"auto", "vmap", "loop"} <= set(group_options("impl"))
    assert "epsilon_sweep" in group_options("experiment")
    defaults = config_defaults()
    assert set(RUN_GROUPS) <= set(defaults)
    for group in RUN_GROUPS:
        assert defaults[group] in group_options(group), f"config.yaml picks {group}={defaults[group]}, no such file"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes(group, option, data_paths):
    cfg = compose_config([f"{group}={option}", *(f"{k}={v}" for k, v in data_paths.get(option, {}).items()
                                                if group == "data")], hydra_node=True)
    if group == "experiment":
        assert cfg.hydra.sweeper.params, f"experiment/{option}.yaml defines no sweep"
    elif group == "data":
        assert cfg.data.cohort.kind in ("phantom", "ct_slice", "dicom_folder", "medmnist_npz", "ehr", "notes",
                                        "tabular_ehr", "breast_cancer", "tabular_csv")
    elif group == "model":  # a model, or a variant of one named <model>_<variant>
        assert cfg.model.name == option or option.startswith(f"{cfg.model.name}_")
    elif group == "algorithm":
        assert cfg.algorithm.algorithm == option
    elif group == "defense":
        assert cfg.defense.name == option
    # Every value interpolates (impl knobs feed the algorithm, for one).
    for key in cfg:  # hydra.job.num & co. are only set at run time
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)


# The presets whose smoke run takes 8-54 s (pytest-xdist, 2 cores): checked by `pytest -m slow` (their
# models and attacks have their own fast tests under tests/models and tests/attacks; the backends
# theirs under tests/federated; compression, secure aggregation and the imprint their scenario runs
# in test_defense_runs.py, partitioning the very same run there; the noise schedules theirs in
# test_privacy_schedules.py; the real-slice cohort its own in tests/data/test_ct.py; CKKS its own in
# tests/defenses; the aggregate attacks and DAGER theirs in tests/attacks, through secure aggregation;
# the two-layer stack its round audits in tests/federated/test_round_audit.py; the budget-aware
# schedule tests/privacy/test_schedules.py; local DP tests/defenses/test_local_dp.py and test_plans.py;
# the tables tests/data/test_tabular.py and tests/attacks/test_tableak.py).
SLOW_PRESETS = {("attack", "token_recovery"), ("attack", "generative_prior"), ("attack", "dlg"), ("attack", "lira"),
                ("attack", "code_recovery"), ("algorithm", "fedavg"), ("model", "convnet"), ("model", "resnet"),
                ("model", "lenet"), ("model", "convnet_plain"), ("data", "notes"), ("defense", "anomaly_screening"),
                ("defense", "tiered_dp_sgd"), ("model", "transformer"), ("defense", "audited_dp_sgd"),
                ("defense", "dp_sgd"), ("defense", "dp_fedavg"), ("impl", "loop"), ("data", "medmnist_npz"),
                ("data", "dicom_folder"), ("privacy", "step"), ("privacy", "exponential_decay"),
                ("impl", "sharded"), ("impl", "vmap"), ("defense", "quantization"), ("defense", "secure_aggregation"),
                ("attack", "imprint"), ("privacy", "linear_decay"), ("defense", "partitioning"), ("data", "ct_slice"),
                ("defense", "homomorphic"), ("data", "breast_cancer"), ("data", "tabular_csv"),
                ("attack", "cocktail_party"), ("attack", "fishing"), ("attack", "dager"), ("defense", "two_layer"),
                ("privacy", "budget_aware"), ("defense", "local_dp"), ("data", "tabular_ehr"), ("attack", "tableak")}
RUN_PARAMS = [pytest.param(group, option, id=f"{group}={option}",
                           marks=[pytest.mark.slow] if (group, option) in SLOW_PRESETS else [])
              for group, option in RUN_OPTIONS]


@pytest.mark.parametrize(("group", "option"), RUN_PARAMS)
def test_every_preset_runs_a_smoke_config(group, option, data_paths):
    changes = preset_changes(group, option, data_paths)
    cfg = compose_smoke(changes)
    result = run_smoke(changes)
    metrics = result.metrics

    # Utility and the data actually used.
    assert 0.0 <= metrics["utility.test_accuracy"] <= 1.0
    # Generated cohorts have num_records=32; files keep at most 32 of what they hold.
    expected_records = {"dicom_folder": len(DICOM_CLASSES) * DICOM_COPIES,
                        "medmnist_npz": min(32, NPZ_TRAIN_RECORDS)}.get(cfg.data.cohort.kind,
                                                                        cfg.data.cohort.num_records)
    assert metrics["data.num_train_records"] + metrics["data.num_test_records"] == expected_records
    assert metrics["data.smallest_hospital"] >= cfg.data.partition.min_records
    assert metrics["model.num_params"] > 0
    assert metrics["train.seconds"] > 0

    # Privacy: calibrated DP meets its budget in its unit; no DP is no guarantee.
    _check_privacy(cfg, metrics)
    if cfg.defense.name != "none":
        assert metrics["defense.name"] == cfg.defense.name
        assert metrics["cost.bytes_per_client"] > 0
        if cfg.defense.protocol is not None:  # ciphertexts and masked vectors cost more than plaintext
            assert metrics["cost.bytes_per_client"] > metrics["cost.plaintext_bytes_per_client"]
        if cfg.defense.compression is not None:
            assert metrics["cost.bytes_per_client"] < metrics["cost.plaintext_bytes_per_client"]
        if cfg.defense.audit_log:  # one signed record per hospital and round, verified and replayed
            assert metrics["audit_log.verified"] is True
            assert metrics["audit_log.records"] == cfg.algorithm.rounds * cfg.data.partition.num_clients
            np.testing.assert_allclose(metrics["audit_log.max_replayed_epsilon"], metrics["privacy.epsilon_rdp"],
                                       rtol=1e-9)

    # The attack ran iff one is configured, and scored real pairs.
    if cfg.attack.config is None:
        assert not [key for key in metrics if key.startswith("attack.")]
        assert result.truth is None and result.reconstructed is None
    else:
        assert metrics["attack.round"] == cfg.attack.observe_round % cfg.algorithm.rounds
        if cfg.defense.protocol is not None:
            assert "only the aggregate" in metrics["attack.status"]
        if cfg.defense.name == "none":
            assert metrics["attack.records_scored"] >= 1
            _check_attack_scores(cfg, metrics, result)

    if group == "model":
        assert cfg.model.name == option or option.startswith(f"{cfg.model.name}_")
        if cfg.data.cohort.kind not in ("ehr", "notes"):
            assert metrics["model.num_params"] == _expected_num_params(cfg, num_classes=4)
    if group == "algorithm" and option == "fedavg":
        assert result.truth.shape[1] == 2 * 2  # two local steps of batch two, all matched
    if group == "impl":
        # impl knobs change speed, never results (DESIGN §5).
        baseline = run_smoke({})
        assert metrics["utility.test_accuracy"] == baseline.metrics["utility.test_accuracy"]
        np.testing.assert_allclose(metrics["attack.psnr_db"], baseline.metrics["attack.psnr_db"], rtol=1e-4)
        np.testing.assert_allclose(result.reconstructed, baseline.reconstructed, atol=1e-4)


def _check_attack_scores(cfg, metrics, result) -> None:
    """What an undefended attack must report, per modality."""
    kind = cfg.data.cohort.kind
    if kind == "ehr":  # FedSGD embedding rows give the exact code set
        assert metrics["attack.code_f1"] == 1.0
        assert result.truth is None
    elif kind == "notes":
        assert metrics["attack.bag_f1"] == 1.0  # the bag is exact; the order is the hard part
        assert 0.0 <= metrics["attack.token_order_accuracy"] <= 1.0
    elif kind in ("tabular_ehr", "breast_cancer", "tabular_csv"):  # 3 iterations: scored, not recovered
        assert 0.0 <= metrics["attack.tabular_accuracy"] <= 1.0
        assert metrics["attack.records_scored"] >= 1 and result.truth is None
    else:
        assert math.isfinite(metrics["attack.psnr_db"]) and 0 < metrics["attack.psnr_db"] <= 100
        if cfg.algorithm.local_steps * cfg.algorithm.batch_size == 1 and cfg.attack.config.get("label_strategy") == "idlg":
            # One record per victim: iDLG reads its label exactly, and the pairing is trivial.
            assert metrics["attack.label_accuracy"] == 1.0
            assert metrics["attack.records_scored"] == min(cfg.attack.num_victims, 2)
        else:
            assert 0.0 <= metrics["attack.label_accuracy"] <= 1.0
        assert result.truth.shape == result.reconstructed.shape
        assert result.truth.shape[-3:] == (16, 16, 1)


def _check_privacy(cfg, metrics) -> None:
    target = float(cfg.privacy.target_epsilon)
    if cfg.defense.tiers is not None:
        assert metrics["privacy.unit"] == "example"
        tiers = [key.split(".")[2] for key in metrics if key.startswith("privacy.tier.") and key.endswith(".epsilon")]
        assert tiers
        for tier in tiers:
            assert metrics[f"privacy.tier.{tier}.epsilon"] <= metrics[f"privacy.tier.{tier}.budget"] + 1e-6
    elif cfg.defense.dp_sgd:
        assert metrics["privacy.unit"] == "example"
        assert 0.9 * target <= metrics["privacy.epsilon_rdp"] <= target + 1e-6
        assert metrics["privacy.noise_multiplier"] > 0
        assert metrics["privacy.steps"] == cfg.algorithm.rounds * cfg.algorithm.local_steps
    elif cfg.defense.dp_fedavg is not None:
        assert metrics["privacy.unit"] == "client"
        assert 0.9 * target <= metrics["privacy.epsilon_rdp"] <= target + 1e-6
        assert metrics["privacy.steps"] == cfg.algorithm.rounds
    elif cfg.defense.local_dp is not None:  # every round's release composed, for the whole hospital
        assert metrics["privacy.unit"] == "client" and metrics["privacy.relation"] == "replace_one_local"
        assert metrics["privacy.epsilon_per_round"] == cfg.defense.local_dp.epsilon
        assert cfg.defense.local_dp.epsilon < metrics["privacy.epsilon"] <= cfg.algorithm.rounds * cfg.defense.local_dp.epsilon
    else:
        assert metrics["privacy.unit"] == "none" and metrics["privacy.epsilon"] == math.inf


def _expected_num_params(cfg, num_classes: int) -> int:
    import jax
    import jax.numpy as jnp
    from hydra.utils import instantiate

    model = instantiate(cfg.model, _convert_="all")(input_shape=(16, 16, 1), num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


def test_mlp_smoke_has_the_hand_counted_parameters():
    # 16*16 inputs -> 256 hidden -> 4 classes, with biases.
    assert run_smoke({}).metrics["model.num_params"] == 16 * 16 * 256 + 256 + 256 * 4 + 4


# Building every job of a 15-defense sweep takes 10-12 s: the two defense tables run under -m slow
# (each defense option composes and runs its own smoke above), with the two sweeps whose per-value
# builds take 7-10 s (their smoke figures run under -m slow).
SLOW_SWEEP_BUILDS = {"defense_table_ehr", "defense_table_ct", "batch_and_local_steps", "noise_schedules"}


SWEEP_PARAMS = [pytest.param(option, marks=[pytest.mark.slow] if option in SLOW_SWEEP_BUILDS else [])
                for option in group_options("experiment")]


@pytest.mark.parametrize("option", SWEEP_PARAMS)
def test_experiment_presets_define_sweeps_that_build(option, tmp_path):
    from experiments.figures import RECIPES

    cfg = compose_config([f"experiment={option}"], hydra_node=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert option in RECIPES, f"experiment/{option}.yaml has no plot recipe in experiments/figures.py"
    points = [[]]
    for key, values in params.items():
        values = [value.strip() for value in str(values).split(",")]
        assert len(values) >= 2, f"{key} sweeps a single value"
        if key in groups():
            assert set(values) <= set(group_options(key)), f"{key}: {values} names a missing preset"
        else:
            assert OmegaConf.select(cfg, key) is not None, f"the sweep sets {key}, which config.yaml lacks"
        points = [point + [f"{key}={value}"] for point in points for value in values]
    assert len(points) == int(np.prod([len(str(v).split(",")) for v in params.values()]))
    # Every point of a small sweep builds (validation only, no compute); of a large one, every
    # value of every swept key (building takes ~1 s a point).
    if len(points) > MAX_BUILT_POINTS:
        points = [[f"{key}={values[min(i, len(values) - 1)]}" for key, values in zip(params, _choices(params))]
                  for i in range(max(map(len, _choices(params))))]
    for point in points:
        build_scenario(compose_smoke({"experiment": option, **dict(item.split("=", 1) for item in point)}),
                       output_dir=str(tmp_path))


MAX_BUILT_POINTS = 4


def _choices(params: dict) -> list[list[str]]:
    return [[value.strip() for value in str(values).split(",")] for values in params.values()]


def test_epsilon_sweep_preset_sweeps_defense_and_epsilon():
    cfg = compose_config(["experiment=epsilon_sweep"], hydra_node=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert set(params) == {"defense", "privacy.target_epsilon"}
    assert str(params["defense"]).split(",") == ["none", "dp_sgd"]
    assert [float(value) for value in str(params["privacy.target_epsilon"]).split(",")] == [1.0, 3.0, 8.0]
    # The preset only adds a sweep: the single-run config is the default one.
    plain = compose_config([])
    assert OmegaConf.to_container(compose_config(["experiment=epsilon_sweep"])) == OmegaConf.to_container(plain)


def test_a_file_cohort_subset_keeps_every_class(dicom_folder):
    # The DICOM folder is sorted by class: num_records must draw records, not take the first class.
    source = CohortSource(kind="dicom_folder", path=str(dicom_folder), num_records=DICOM_COPIES, image_size=16)
    cohort = load_cohort(source, numpy_generator(run_keys(0).data))
    assert cohort.num_records == DICOM_COPIES
    assert cohort.class_names == DICOM_CLASSES
    assert set(cohort.labels.tolist()) == {0, 1}
    again = load_cohort(source, numpy_generator(run_keys(0).data))
    np.testing.assert_array_equal(again.images, cohort.images)
