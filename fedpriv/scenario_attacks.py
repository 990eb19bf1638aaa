"""The scenario's attack step: run the configured attack on one observation, score it.

Part of the scenario (it holds both the attacker's view and the ground truth): the
attack functions get only the ``Observation`` and public knowledge; scoring against the
records the victims really used that round is done here with ``fedpriv.metrics``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv import metrics
from fedpriv.attacks import AttackCompilation, InvertingGradientsConfig, invert_gradients
from fedpriv.attacks.analytic import AnalyticConfig, analytic_attack
from fedpriv.attacks.code_recovery import CodeRecoveryConfig, recover_codes
from fedpriv.attacks.dlg import DLGConfig, deep_leakage
from fedpriv.attacks.generative_prior import GenerativePriorConfig, invert_with_prior
from fedpriv.attacks.image_prior import train_image_prior
from fedpriv.attacks.imprint import ImprintConfig, make_imprint_model, recover_from_imprint
from fedpriv.attacks.tokens import TokenRecoveryConfig, recover_tokens, token_bag
from fedpriv.metrics import codes as code_metrics
from fedpriv.metrics import tokens as token_metrics
from fedpriv.keys import numpy_generator
from fedpriv.typing import ClientData, Model, Observation, Reconstruction

IMAGE_ATTACKS = (InvertingGradientsConfig, DLGConfig, GenerativePriorConfig, ImprintConfig, AnalyticConfig)
ATTACK_CONFIGS = (*IMAGE_ATTACKS, CodeRecoveryConfig, TokenRecoveryConfig)
# A reconstructed record counts as recovered exactly below this relative L2 error.
EXACT_RELATIVE_ERROR = 1e-4


def attack_iterations(attack) -> int:
    """Optimisation steps over all restarts of one victim (1 for analytic attacks)."""
    return int(getattr(attack, "iterations", 1)) * int(getattr(attack, "restarts", 1))


def run_attack(attack, *, observation: Observation, client_data: ClientData, model: Model, victims: list[int],
               key: jax.Array, compilation: AttackCompilation, cohort, partition, prior=None,
               noise_stddev: float = 0.0) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Runs ``attack`` against ``victims`` (positions on the observed client axis) and scores it.

    Returns ``(metrics, truth, reconstructed)``; the images are ``[V, K, ...]`` matched
    pairs for image attacks and ``None`` otherwise.
    """
    victim_clients = [observation.metadata.client_ids[v] for v in victims]
    labels = None
    if getattr(attack, "label_strategy", None) == "known":
        labels = np.stack([known_labels(client_data, client, observation.metadata.batch_size)
                           for client in victim_clients])
    started = time.perf_counter()
    truth = reconstructed = None
    if isinstance(attack, CodeRecoveryConfig):
        recovery, method = recover_codes(observation, model, attack, victims=victims, noise_stddev=noise_stddev)
        seconds = time.perf_counter() - started
        results = score_codes(recovery, client_data, victim_clients, cohort)
        results["attack.method"] = method
    elif isinstance(attack, TokenRecoveryConfig):
        reconstruction = recover_tokens(observation, model, attack, key, victims=victims, labels=labels)
        seconds = time.perf_counter() - started
        results = score_tokens(reconstruction, client_data, victim_clients)
        bags = token_bag(observation, victims=victims, embedding_path=attack.embedding_path)
        note_length = client_data.examples["x"].shape[-1]
        bag_scores = [token_metrics.set_scores(bag, _victim_records(client_data, client, (note_length,))[0].ravel())
                      for bag, client in zip(bags, victim_clients)]
        results["attack.bag_f1"] = float(np.mean([score["f1"] for score in bag_scores]))
    else:
        if isinstance(attack, InvertingGradientsConfig):
            reconstruction = invert_gradients(observation, model, attack, key, victims=victims, labels=labels,
                                              compilation=compilation)
        elif isinstance(attack, DLGConfig):
            reconstruction = deep_leakage(observation, model, attack, key, victims=victims, labels=labels,
                                          compilation=compilation)
        elif isinstance(attack, GenerativePriorConfig):
            reconstruction = invert_with_prior(observation, model, prior, attack, key, victims=victims,
                                               labels=labels, compilation=compilation)
        elif isinstance(attack, ImprintConfig):
            reconstruction = recover_from_imprint(observation, victims=victims)
        elif isinstance(attack, AnalyticConfig):
            reconstruction = analytic_attack(observation, attack, victims)
        else:
            raise ValueError(f"attack config must be one of {[c.__name__ for c in ATTACK_CONFIGS]}, "
                             f"got {type(attack).__name__}")
        seconds = time.perf_counter() - started
        results, truth, reconstructed = score_reconstruction(reconstruction, client_data, victim_clients, partition,
                                                             cohort)
    results["attack.seconds"] = seconds
    results["attack.seconds_per_iteration"] = seconds / (attack_iterations(attack) * len(victims))
    return results, truth, reconstructed


@dataclasses.dataclass(frozen=True)
class Threat:
    """The attacker before training: the model the server sends (crafted by a malicious
    server), its public images and the prior it trained on them."""

    model: Model
    public_images: np.ndarray | None = None
    prior: object = None
    prior_seconds: float = 0.0


def prepare_attack(config, model: Model, cohorts, keys) -> Threat:
    """Public knowledge (phantoms of other patients, never the cohort's), a malicious
    server's crafted model, and a generative prior trained before the attack."""
    attack = config.attack
    if isinstance(attack, AnalyticConfig):
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.input_shape)))
        if "bias" not in shapes.get(attack.layer, {}):
            raise ValueError(f"attack.config.layer {attack.layer!r} is not a dense layer with bias of model "
                             f"{model.name!r}; its layers: {sorted(shapes)}")
    if not isinstance(attack, ImprintConfig) and config.attack_prior is None:
        return Threat(model=model)
    input_shape, num_classes = cohorts.train.input_shape, cohorts.train.num_classes
    public_images = data_lib.make_phantom_cohort(
        config.public_records, input_shape[0], numpy_generator(jax.random.fold_in(keys.attack, 3)),
        num_classes=min(num_classes, 5)).images
    if isinstance(attack, ImprintConfig):  # the malicious server crafts the model it sends
        model, _ = make_imprint_model(model, bins=attack.bins, measurement=attack.measurement,
                                      public_inputs=public_images, key=jax.random.fold_in(keys.attack, 4),
                                      output_scale=attack.output_scale, gain=attack.gain,
                                      lowest_level=attack.lowest_level)
        return Threat(model=model, public_images=public_images)
    started = time.perf_counter()
    prior = train_image_prior(public_images, config.attack_prior, jax.random.fold_in(keys.attack, 5))
    return Threat(model=model, public_images=public_images, prior=prior, prior_seconds=time.perf_counter() - started)


def attack_stage(config, threat: Threat, trained, plan, cohorts, observe_round: int, keys):
    """Observes the chosen round and runs the configured attack on it; scores it against the truth."""
    if config.attack is None:
        return {}, None, None
    training, partition = trained.training, cohorts.partition
    if observe_round not in training.observations:
        return {"attack.status": f"round {observe_round} was never run: {training.stop_reason}"}, None, None
    observation = training.observations[observe_round]
    client_data = training.observed_data[observe_round]
    results: dict = {"attack.round": observe_round}
    if observation.aggregated and not isinstance(config.attack, ImprintConfig):
        results["attack.status"] = ("the server observed only the aggregate of the updates "
                                    f"({config.defenses.protocol.name}): no per-hospital update to invert")
        return results, None, None
    if observation.aggregated:
        # The imprint reads records off the SUM: every participant's records are the victims'.
        merged, merged_partition = merge_participants(client_data, partition)
        observation = dataclasses.replace(observation, metadata=dataclasses.replace(observation.metadata,
                                                                                     client_ids=(0,)))
        scores, truth, reconstructed = run_attack(
            config.attack, observation=observation, client_data=merged, model=threat.model, victims=[0],
            key=keys.attack, compilation=config.attack_compilation, cohort=cohorts.train, partition=merged_partition)
        return {**results, **scores}, truth, reconstructed
    if not observation.metadata.client_ids:
        # e.g. every hospital refused the crafted model: nothing was sent, nothing leaks.
        return ({**results, "attack.status": f"no hospital sent an update in round {observe_round}",
                 "attack.records_scored": 0, "attack.exact_recovery_rate": 0.0}, None, None)
    victims = list(range(min(config.num_victims, len(observation.metadata.client_ids))))
    noise_stddev = plan.update_noise_stddev(observe_round, learning_rate=config.federation.local.learning_rate,
                                            local_steps=config.federation.local_steps)
    scores, truth, reconstructed = run_attack(
        config.attack, observation=observation, client_data=client_data, model=threat.model, victims=victims,
        key=keys.attack, compilation=config.attack_compilation, cohort=cohorts.train, partition=partition,
        prior=threat.prior, noise_stddev=noise_stddev)
    results.update(scores)
    if threat.prior is not None:
        results["attack.prior_training_seconds"] = threat.prior_seconds
    return results, truth, reconstructed


def merge_participants(client_data: ClientData, partition: list[np.ndarray]) -> tuple[ClientData, list[np.ndarray]]:
    """The round's participants as ONE client (what an aggregate mixes), and its hospital."""
    present = np.flatnonzero(np.asarray(client_data.client_mask) > 0)
    flat = lambda a: np.asarray(a)[present].reshape(1, 1, -1, *np.asarray(a).shape[3:])
    merged = ClientData(examples={name: jnp.asarray(flat(value)) for name, value in client_data.examples.items()},
                        example_mask=jnp.asarray(flat(client_data.example_mask)), client_mask=jnp.ones(1),
                        record_ids=jnp.asarray(flat(client_data.record_ids)))
    return merged, [np.concatenate([partition[c] for c in present])]


def known_labels(client_data: ClientData, client: int, batch_size: int) -> np.ndarray:
    """A victim's labels as side knowledge, ``[S, batch_size]`` as the protocol states the batch.

    Under Poisson sampling the round's padded capacity exceeds the protocol's batch size
    and a step may hold more or fewer records: each step's real labels come first, cut or
    repeated to ``batch_size`` (class 0 for a step without records).
    """
    y = np.asarray(client_data.examples["y"][client])
    mask = np.asarray(client_data.example_mask[client]) > 0
    steps = []
    for step_labels, step_mask in zip(y, mask):
        real = step_labels[step_mask]
        if real.size == 0:
            real = np.zeros(1, y.dtype)
        steps.append(np.resize(real, batch_size))
    return np.stack(steps).astype(np.int32)


def _victim_records(client_data: ClientData, client: int, input_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = np.asarray(client_data.example_mask[client]).reshape(-1) > 0
    inputs = np.asarray(client_data.examples["x"][client]).reshape(-1, *input_shape)[mask]
    ids = np.asarray(client_data.record_ids[client]).reshape(-1)[mask]
    labels = np.asarray(client_data.examples["y"][client]).reshape(-1)[mask]
    return inputs, ids, labels


def score_codes(recovery, client_data: ClientData, victim_clients: list[int], cohort) -> dict:
    """Set, hierarchy, count and subtype scores of recovered codes against the round's records."""
    vocabulary_size = cohort.vocabulary_size
    true_rows, true_labels = [], []
    for client in victim_clients:
        codes, _, labels = _victim_records(client_data, client, cohort.input_shape)
        true_rows.append(codes.reshape(-1))
        true_labels.append(labels)
    width = max(1, max(row.size for row in true_rows))
    padded = np.stack([np.pad(row, (0, width - row.size)) for row in true_rows]).astype(np.int32)
    true_counts = code_metrics.token_counts(padded, vocabulary_size)
    results = {f"attack.code_{name}": value
               for name, value in code_metrics.code_set_scores(recovery.present, true_counts > 0).items()}
    hierarchy = code_metrics.hierarchical_match(recovery.present, true_counts > 0, cohort.vocabulary)
    results["attack.code_hierarchy_score"] = hierarchy["score"]
    results["attack.code_same_category"] = hierarchy["category"]
    results["attack.records_scored"] = int(sum(len(labels) for labels in true_labels))
    if recovery.counts is not None:
        results.update({f"attack.count_{name}": value
                        for name, value in code_metrics.count_accuracy(recovery.counts, true_counts).items()})
    single = [i for i, labels in enumerate(true_labels) if len(labels) == 1]
    if single:  # the subtype a recovered single record implies
        recovered = recovery.counts if recovery.counts is not None else recovery.present
        results["attack.subtype_accuracy"] = code_metrics.subtype_accuracy(
            np.asarray(recovered)[single], np.array([true_labels[i][0] for i in single]), cohort.vocabulary)
    return results


def score_tokens(reconstruction: Reconstruction, client_data: ClientData, victim_clients: list[int]) -> dict:
    """Term recovery and word order of recovered notes against the round's notes (best-matched)."""
    scores, records = [], 0
    for position, client in enumerate(victim_clients):
        true_notes, _, _ = _victim_records(client_data, client, (client_data.examples["x"].shape[-1],))
        recovered = np.asarray(reconstruction.inputs[position]).reshape(-1, true_notes.shape[-1])
        for index, note in enumerate(true_notes):
            scores.append(token_metrics.token_scores(recovered[min(index, len(recovered) - 1)], note))
            records += 1
    if not scores:
        return {"attack.records_scored": 0}
    results = {f"attack.token_{name}": float(np.mean([s[name] for s in scores])) for name in scores[0]}
    results["attack.records_scored"] = records
    return results


def score_reconstruction(reconstruction: Reconstruction, client_data: ClientData, victim_clients: list[int],
                         partition: list[np.ndarray], cohort) -> tuple[dict, np.ndarray, np.ndarray]:
    """Scores each victim's reconstructed images against the records it really used that round.

    Reconstructions and true records are paired by best match (Hungarian on MSE); under
    Poisson sampling the two sets may differ in size and only matched pairs are scored.
    Candidates that are not finite (e.g. the imprint attack's empty bins) are dropped.
    """
    psnrs, ssims, mses, reidentified, exact, pairs_truth, pairs_recon = [], [], [], [], [], [], []
    label_hits = label_total = true_total = 0
    count_pairs = []
    for position, client in enumerate(victim_clients):
        true_images, true_ids, true_labels = _victim_records(client_data, client, cohort.input_shape)
        recon = reconstruction.inputs[position].reshape(-1, *cohort.input_shape)
        recon_labels = np.asarray(reconstruction.labels[position]).reshape(-1)
        if recon_labels.size != recon.shape[0]:
            recon_labels = np.full(recon.shape[0], -1)
        if np.all(recon_labels >= 0) and recon_labels.size == true_labels.size:  # the batch's label multiset
            count_pairs.append((metrics.label_counts(recon_labels, cohort.num_classes),
                                metrics.label_counts(true_labels, cohort.num_classes)))
        finite = np.all(np.isfinite(recon.reshape(recon.shape[0], -1)), axis=1)
        recon, recon_labels = recon[finite], recon_labels[finite]
        true_total += true_images.shape[0]
        if true_images.shape[0] == 0 or recon.shape[0] == 0:
            continue
        if recon.shape[0] <= true_images.shape[0]:
            recon_index = np.arange(recon.shape[0])
            truth_index = metrics.best_match(recon, true_images)
        else:
            truth_index = np.arange(true_images.shape[0])
            recon_index = metrics.best_match(true_images, recon)
        matched_recon, matched_truth = recon[recon_index], true_images[truth_index]
        psnrs.append(np.asarray(metrics.psnr(matched_recon, matched_truth)))
        ssims.append(np.asarray(metrics.ssim(matched_recon, matched_truth)))
        mses.append(np.asarray(metrics.mse(matched_recon, matched_truth)))
        error = (np.linalg.norm((matched_recon - matched_truth).reshape(len(recon_index), -1), axis=1)
                 / np.maximum(np.linalg.norm(matched_truth.reshape(len(recon_index), -1), axis=1), 1e-12))
        exact.append(int(np.sum(error < EXACT_RELATIVE_ERROR)))
        hospital = partition[client]
        reidentified.append(metrics.reidentification_rate(matched_recon, true_ids[truth_index],
                                                          cohort.images[hospital], hospital) * len(recon_index))
        label_hits += int(np.sum(recon_labels[recon_index] == true_labels[truth_index]))
        label_total += len(recon_index)
        pairs_truth.append(matched_truth)
        pairs_recon.append(matched_recon)
    if label_total == 0:
        nan = float("nan")
        return ({"attack.psnr_db": nan, "attack.ssim": nan, "attack.mse": nan, "attack.label_accuracy": nan,
                 "attack.reidentification_rate": nan, "attack.records_scored": 0}, None, None)
    psnr_all = np.concatenate(psnrs)
    scores = {
        "attack.psnr_db": float(np.mean(np.minimum(psnr_all, 100.0))),  # exact copies are capped at 100 dB
        "attack.psnr_db_best": float(np.max(np.minimum(psnr_all, 100.0))),
        "attack.ssim": float(np.mean(np.concatenate(ssims))),
        "attack.mse": float(np.mean(np.concatenate(mses))),
        "attack.label_accuracy": label_hits / label_total,
        "attack.reidentification_rate": float(np.sum(reidentified) / label_total),
        "attack.records_scored": int(label_total),
        # Of every record the victims used, the fraction given back exactly.
        "attack.exact_recovery_rate": float(np.sum(exact) / max(true_total, 1)),
    }
    if count_pairs:  # iLRG's count accuracy: victims whose whole label-count vector is exact
        predicted, true = (np.stack(side) for side in zip(*count_pairs))
        scores["attack.label_count_exact"] = metrics.label_count_accuracy(predicted, true)["vector_exact"]
    width = max(p.shape[0] for p in pairs_truth)
    pad = lambda arrays: np.stack([np.concatenate([a, np.zeros((width - a.shape[0], *a.shape[1:]), a.dtype)])
                                   for a in arrays])
    return scores, pad(pairs_truth), pad(pairs_recon)
