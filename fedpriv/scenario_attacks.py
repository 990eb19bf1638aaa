"""The scenario's attack step: run the configured attack on one observation, score it.

Part of the scenario (it holds both the attacker's view and the ground truth): attacks
are built from public knowledge and called on the ``Observation`` through one protocol
(``fedpriv.attacks.protocol``); the scorer of the attack's kind (``SCORERS``) compares the
result with the records the victims really used that round, with ``fedpriv.metrics``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv import metrics
from fedpriv.attacks import consistency
from fedpriv.attacks.image_prior import train_image_prior
from fedpriv.attacks.protocol import (Attack, CodeRecoveryResult, PublicKnowledge, SideKnowledge,
                                      TokenRecoveryResult)
from fedpriv.attacks.tableak import TabularRecoveryResult
from fedpriv.keys import numpy_generator
from fedpriv.metrics import codes as code_metrics
from fedpriv.metrics import record_scores
from fedpriv.metrics import tabular as tabular_metrics
from fedpriv.metrics import tokens as token_metrics
from fedpriv.public import icd10
from fedpriv.public.clinical_words import PAD_ID, detokenize
from fedpriv.typing import ClientData, Model, Observation, Reconstruction

# A reconstructed record counts as recovered exactly below this relative L2 error.
EXACT_RELATIVE_ERROR = 1e-4
# What each cohort kind holds, so which attack kinds fit it.
ATTACK_KIND_OF_COHORT = {"ehr": "codes", "notes": "tokens", "tabular_ehr": "tabular", "breast_cancer": "tabular",
                         "tabular_csv": "tabular"}


@dataclasses.dataclass(frozen=True)
class RoundTruth:
    """The ground truth a scorer compares with: the records the victims used that round."""

    client_data: ClientData
    victim_clients: list[int]
    partition: list[np.ndarray]
    cohort: object
    # The attacker's guess of any record before it sees an update (the baseline of image
    # scores): the mean of its public images, or None for the blank guess.
    prior_guess: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class VictimLeak:
    """What one victim's records gave away, as a person reads it: its true items (codes, or
    whole notes) and what the attacker recovered, in the scorer's pairing."""

    client: int
    true: tuple[str, ...]
    recovered: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Scored:
    """A scorer's answer: flat metrics and what the run folder shows of the leak.

    ``truth`` and ``reconstructed`` are ``[V, K, ...]`` scored image pairs (image attacks);
    ``leaks`` one ``VictimLeak`` per victim (code and note attacks).
    """

    metrics: dict
    truth: np.ndarray | None = None
    reconstructed: np.ndarray | None = None
    leaks: tuple[VictimLeak, ...] = ()


def run_attack(attack: Attack, observation: Observation, truth: RoundTruth, *, victims: list[int],
               key: jax.Array, noise_stddev: float = 0.0) -> Scored:
    """Runs ``attack`` against ``victims`` (positions on the observed client axis) and scores
    it with the scorer of its kind."""
    labels = None
    if attack.needs_known_labels:
        labels = np.stack([known_labels(truth.client_data, client, observation.metadata.batch_size)
                           for client in truth.victim_clients])
    started = time.perf_counter()
    result = attack(observation, key, victims=victims,
                    side_knowledge=SideKnowledge(labels=labels, noise_stddev=noise_stddev))
    seconds = time.perf_counter() - started
    scored = SCORERS[attack.kind](result, truth)
    scored.metrics.update({"attack.kind": attack.kind, "attack.seconds": seconds,
                           "attack.seconds_per_iteration": seconds / (attack.iterations * len(victims))})
    return scored


@dataclasses.dataclass(frozen=True)
class Threat:
    """The attacker before training: the model the server sends (crafted by a malicious
    server), the built attack (``None`` without one) and the seconds its prior took."""

    model: Model
    attack: Attack | None = None
    prior_seconds: float = 0.0
    prior_guess: np.ndarray | None = None


def prepare_attack(config, model: Model, cohorts, keys) -> Threat:
    """Public knowledge (phantoms of other patients, never the cohort's), a generative prior
    trained on it, and the attack built from them (a malicious server crafts its model here)."""
    attack = config.attack
    if attack is None:
        return Threat(model=model)
    public = PublicKnowledge(compilation=config.attack_compilation, key=jax.random.fold_in(keys.attack, 4))
    if attack.kind == "tabular":  # the table's published schema, never a record
        public = dataclasses.replace(public, table_layout=cohorts.train.public_layout())
    images = None
    if attack.kind == "images" or config.attack_prior is not None:
        input_shape, num_classes = cohorts.train.input_shape, cohorts.train.num_classes
        images = data_lib.make_phantom_cohort(
            config.public_records, input_shape[0], numpy_generator(jax.random.fold_in(keys.attack, 3)),
            num_classes=min(num_classes, 5)).images
    if attack.needs_public_images or config.attack_prior is not None:
        public = dataclasses.replace(public, images=images)
    started = time.perf_counter()
    if config.attack_prior is not None:
        public = dataclasses.replace(public, prior=train_image_prior(public.images, config.attack_prior,
                                                                     jax.random.fold_in(keys.attack, 5)))
    prior_seconds = time.perf_counter() - started
    built = attack.make(model, public)
    return Threat(model=built.model, attack=built, prior_seconds=prior_seconds,
                  prior_guess=_public_mean(images, cohorts.train.input_shape))


def _public_mean(images: np.ndarray | None, input_shape) -> np.ndarray | None:
    """The mean public image when it has the records' shape (phantoms are one-channel)."""
    if images is None or tuple(images.shape[1:]) != tuple(input_shape):
        return None
    return images.mean(axis=0)


def attack_stage(config, threat: Threat, trained, plan, cohorts, observe_round: int, keys) -> Scored:
    """Observes the chosen round and runs the configured attack on it; scores it against the truth."""
    if config.attack is None:
        return Scored({})
    training, partition, attack = trained.training, cohorts.partition, threat.attack
    if observe_round not in training.observations:
        return Scored({"attack.status": f"round {observe_round} was never run: {training.stop_reason}"})
    observation = training.observations[observe_round]
    client_data = training.observed_data[observe_round]
    results: dict = {"attack.round": observe_round}
    if config.attack_prior is not None:
        results["attack.prior_training_seconds"] = threat.prior_seconds
    if observation.aggregated and not attack.observes_aggregate:
        results["attack.status"] = ("the server observed only the aggregate of the updates "
                                    f"({config.defenses.protocol.name}): no per-hospital update to invert")
        return Scored(results)
    # An aggregate names no client (its ids are empty): whether anyone sent is in the round's mask.
    sent = (np.any(np.asarray(client_data.client_mask) > 0) if observation.aggregated
            else observation.metadata.client_ids)
    if not sent:
        # e.g. every hospital refused the crafted model: nothing was sent, nothing leaks.
        return Scored({**results, "attack.status": f"no hospital sent an update in round {observe_round}",
                       "attack.records_scored": 0, "attack.exact_recovery_rate": 0.0})
    if observation.aggregated:
        # The attack reads records off the SUM: every participant's records are the victims'.
        merged, merged_partition = merge_participants(client_data, partition)
        observation = dataclasses.replace(observation, metadata=dataclasses.replace(observation.metadata,
                                                                                     client_ids=(0,)))
        truth = RoundTruth(merged, [0], merged_partition, cohorts.train, threat.prior_guess)
        scored = run_attack(attack, observation, truth, victims=[0], key=keys.attack)
        return dataclasses.replace(scored, metrics={**results, **scored.metrics})
    victims = list(range(min(config.num_victims, len(observation.metadata.client_ids))))
    noise_stddev = plan.update_noise_stddev(observe_round, learning_rate=config.federation.local.learning_rate,
                                            local_steps=config.federation.local_steps)
    truth = RoundTruth(client_data, [observation.metadata.client_ids[v] for v in victims], partition, cohorts.train,
                       threat.prior_guess)
    scored = run_attack(attack, observation, truth, victims=victims, key=keys.attack, noise_stddev=noise_stddev)
    return dataclasses.replace(scored, metrics={**results, **scored.metrics})


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


def score_codes(result: CodeRecoveryResult, truth: RoundTruth) -> Scored:
    """Set, hierarchy, count and subtype scores of recovered codes against the round's records.

    Codes are recovered as each victim's set (or counts) of codes, not record by record,
    so they are scored as sets: no pairing is involved.
    """
    recovery, client_data, cohort = result.recovery, truth.client_data, truth.cohort
    vocabulary_size = cohort.vocabulary_size
    true_rows, true_labels = [], []
    for client in truth.victim_clients:
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
    results.update(exfiltration_scores(recovery.present, cohort))
    results["attack.method"] = result.method
    return Scored(results, leaks=tuple(_code_leak(client, counts > 0, present, cohort.vocabulary)
                                       for client, counts, present in zip(truth.victim_clients, true_counts,
                                                                          recovery.present)))


# A reconstructed record matches a real patient when the Jaccard index of their token sets
# (codes, age, sex and lab bins) reaches this: one wrong token in a record of ~15 keeps it.
EXFILTRATION_MATCH_JACCARD = 0.8
# The stand-in for public co-occurrence tables: an EHR cohort on a key of its own, never the run's.
PUBLIC_REFERENCE_RECORDS = 20_000
PUBLIC_REFERENCE_KEY = 20231015


@functools.lru_cache(maxsize=4)
def public_cooccurrence(max_codes: int) -> consistency.PublicCooccurrence:
    """Co-occurrence counts of the public reference cohort (``PUBLIC_REFERENCE_RECORDS`` records)."""
    reference = data_lib.make_ehr_cohort(
        data_lib.EHRCohortConfig(num_records=PUBLIC_REFERENCE_RECORDS, max_codes=max_codes),
        numpy_generator(jax.random.key(PUBLIC_REFERENCE_KEY)))
    return consistency.PublicCooccurrence.from_token_ids(reference.codes, reference.vocabulary)


def exfiltration_scores(present: np.ndarray, cohort) -> dict:
    """Precision of the records the attacker would exfiltrate, without and with the
    consistency filter (``fedpriv.attacks.consistency``, public knowledge only).

    Each victim's non-empty recovered token set is one exfiltrated record; it is correct
    when some patient of ``cohort`` has a token set within ``EXFILTRATION_MATCH_JACCARD``
    of it (a batch of several records recovers their union, which rarely matches anyone).
    A false rejection is a rejected record that was correct.
    """
    present = np.asarray(present, bool)[np.asarray(present, bool).any(axis=1)]
    real = code_metrics.token_counts(np.asarray(cohort.inputs), cohort.vocabulary_size) > 0
    shared = present.astype(np.float64) @ real.T.astype(np.float64)
    union = present.sum(axis=1)[:, None] + real.sum(axis=1)[None, :] - shared
    matched = (shared / np.maximum(union, 1)).max(axis=1, initial=0.0) >= EXFILTRATION_MATCH_JACCARD
    records = [consistency.record_from_tokens([cohort.vocabulary.token(i) for i in np.flatnonzero(row)])
               for row in present]
    verdict = consistency.verify(records, consistency.default_rules(public_cooccurrence(cohort.input_shape[0])))
    kept = verdict.kept
    for index in verdict.rejected:
        logging.getLogger(__name__).info("consistency filter rejected record %d: %s", index,
                                         "; ".join(verdict.reasons[index]))
    precision = lambda hits: float(np.mean(hits)) if hits.size else float("nan")
    return {"attack.exfiltrated_records": int(present.shape[0]),
            "attack.exfiltration_precision": precision(matched),
            "attack.exfiltration_precision_filtered": precision(matched[kept]),
            "attack.consistency_rejected": int(np.sum(~kept)),
            "attack.consistency_false_rejections": int(np.sum(~kept & matched))}


def _code_leak(client: int, true_present, recovered_present, vocabulary) -> VictimLeak:
    tokens = lambda present: tuple(token for token in map(vocabulary.token, np.flatnonzero(present).tolist())
                                   if token != icd10.PAD_TOKEN)
    return VictimLeak(client, tokens(true_present), tokens(recovered_present))


def score_tokens(result: TokenRecoveryResult, truth: RoundTruth) -> Scored:
    """Term recovery and word order of recovered notes against EVERY note used that round.

    Notes are paired like images (``metrics.assign_records`` on ``1 - ROUGE-L F1``); a
    note with no recovered counterpart is scored against an empty recovery (all zeros).
    """
    reconstruction, client_data = result.notes, truth.client_data
    scores, records, missing, leaks = [], 0, 0, []
    for position, client in enumerate(truth.victim_clients):
        true_notes, _, _ = _victim_records(client_data, client, (client_data.examples["x"].shape[-1],))
        recovered = np.asarray(reconstruction.inputs[position]).reshape(-1, true_notes.shape[-1])
        costs = np.array([[1.0 - token_metrics.rouge_l(r[None], t[None]) for t in true_notes] for r in recovered])
        assignment = metrics.assign_records(costs.reshape(len(recovered), len(true_notes)))
        scores += [token_metrics.token_scores(recovered[r], true_notes[t])
                   for r, t in zip(assignment.reconstruction_index, assignment.truth_index)]
        scores += [token_metrics.token_scores(np.full_like(true_notes[t], PAD_ID), true_notes[t])
                   for t in assignment.missing]
        records += len(true_notes)
        missing += len(assignment.missing)
        leaks.append(_note_leak(client, true_notes, recovered, assignment))
    if not scores:
        return Scored({"attack.records_scored": 0})
    results = {f"attack.token_{name}": float(np.mean([s[name] for s in scores])) for name in scores[0]}
    results.update({"attack.records_scored": records, "attack.records_missing": missing})
    note_length = client_data.examples["x"].shape[-1]
    bag_scores = [token_metrics.set_scores(bag, _victim_records(client_data, client, (note_length,))[0].ravel())
                  for bag, client in zip(result.bags, truth.victim_clients)]
    results["attack.bag_f1"] = float(np.mean([score["f1"] for score in bag_scores]))
    return Scored(results, leaks=tuple(leaks))


def _note_leak(client: int, true_notes, recovered, assignment) -> VictimLeak:
    """True notes in the scorer's pairing, each beside its recovered note ("" when missing)."""
    order = [*assignment.truth_index, *assignment.missing]
    paired = [detokenize(recovered[r]) for r in assignment.reconstruction_index] + [""] * len(assignment.missing)
    return VictimLeak(client, tuple(detokenize(true_notes[t]) for t in order), tuple(paired))


def score_reconstruction(reconstruction: Reconstruction, truth: RoundTruth) -> Scored:
    """Scores each victim's reconstructed images against EVERY record it used that round.

    Pairs come from ``metrics.score_image_records``: Hungarian assignment on MSE, or all
    reconstructions against their nearest record when there are more of them (never a
    ground-truth pick); a record without a reconstruction scores as the blank guess and
    counts as not re-identified, not exact and with a wrong label. Beside each score is
    the baseline of the attacker's prior guess (``truth.prior_guess``, else the blank
    guess) on the same records: what the update added is the gain over it.
    """
    client_data, cohort = truth.client_data, truth.cohort
    per_victim, records, exact, reidentified, label_hits, count_pairs = [], 0, 0, 0.0, 0, []
    guess = (record_scores.blank_guess(cohort.input_shape) if truth.prior_guess is None
             else np.asarray(truth.prior_guess, np.float32))
    baseline = []
    for position, client in enumerate(truth.victim_clients):
        true_images, true_ids, true_labels = _victim_records(client_data, client, cohort.input_shape)
        recon = reconstruction.inputs[position].reshape(-1, *cohort.input_shape)
        recon_labels = np.asarray(reconstruction.labels[position]).reshape(-1)
        if recon_labels.size != recon.shape[0]:
            recon_labels = np.full(recon.shape[0], -1)
        if np.all(recon_labels >= 0) and recon_labels.size == true_labels.size:  # the batch's label multiset
            count_pairs.append((metrics.label_counts(recon_labels, cohort.num_classes),
                                metrics.label_counts(true_labels, cohort.num_classes)))
        finite = np.isfinite(recon).reshape(recon.shape[0], int(np.prod(recon.shape[1:]))).all(axis=1)
        scored = record_scores.score_image_records(recon, true_images)
        per_victim.append(scored)
        baseline.append(record_scores.score_guess(guess, true_images))
        records += true_images.shape[0]
        pairs = len(scored.truth_index)
        if pairs == 0:
            continue
        matched_recon, truth_index = scored.reconstructed[:pairs], scored.truth_index
        error = (np.linalg.norm((matched_recon - true_images[truth_index]).reshape(pairs, -1), axis=1)
                 / np.maximum(np.linalg.norm(true_images[truth_index].reshape(pairs, -1), axis=1), 1e-12))
        exact += len(np.unique(truth_index[error < EXACT_RELATIVE_ERROR]))
        hospital = truth.partition[client]
        reidentified += metrics.reidentification_rate(matched_recon, true_ids[truth_index],
                                                      cohort.images[hospital], hospital) * pairs
        label_hits += int(np.sum(recon_labels[finite][scored.reconstruction_index] == true_labels[truth_index]))
    scores, true_images, reconstructed = _image_summary(per_victim, records, exact, reidentified, label_hits,
                                                        count_pairs)
    if records:
        scores.update(_baseline_summary(baseline, scores, "blank" if truth.prior_guess is None else "public_mean"))
    return Scored(scores, true_images, reconstructed)


def _baseline_summary(baseline, scores: dict, name: str) -> dict:
    """The prior guess's scores on the same records, and what the attack gained over it."""
    psnr_db, ssim_values = (np.concatenate(column) for column in zip(*baseline))
    summary = record_scores.summarise(psnr_db, ssim_values)
    results = {f"attack.baseline_{key}": value for key, value in summary.items()}
    results.update({"attack.baseline": name,
                    "attack.psnr_gain_db": scores["attack.psnr_db"] - summary["psnr_db"],
                    "attack.ssim_gain": scores["attack.ssim"] - summary["ssim"]})
    return results


def _image_summary(per_victim, records: int, exact: int, reidentified: float, label_hits: int,
                   count_pairs) -> tuple:
    if records == 0:
        nan = float("nan")
        return ({"attack.psnr_db": nan, "attack.ssim": nan, "attack.mse": nan, "attack.label_accuracy": nan,
                 "attack.reidentification_rate": nan, "attack.records_scored": 0}, None, None)
    psnr_all = np.concatenate([s.psnr_db for s in per_victim])
    ssim_all = np.concatenate([s.ssim for s in per_victim])
    scored_pairs = len(psnr_all)  # records, plus the surplus when every reconstruction is scored
    scores = {f"attack.{name}": value for name, value in record_scores.summarise(psnr_all, ssim_all).items()}
    scores.update({
        "attack.psnr_db_best": float(np.max(psnr_all)),  # the best pair, picked with the ground truth
        "attack.mse": float(np.mean(np.concatenate([s.mse for s in per_victim]))),
        "attack.matching": "+".join(sorted({s.matching for s in per_victim})),
        "attack.records_scored": int(records),
        "attack.records_missing": int(sum(s.missing for s in per_victim)),
        "attack.reconstructions_surplus": int(sum(s.surplus for s in per_victim)),
        # Over the scored pairs (a missing record is a failed pair):
        "attack.label_accuracy": label_hits / scored_pairs,
        "attack.reidentification_rate": float(reidentified / scored_pairs),
        # Of every record the victims used, the fraction given back exactly.
        "attack.exact_recovery_rate": float(exact / records),
    })
    if count_pairs:  # iLRG's count accuracy: victims whose whole label-count vector is exact
        predicted, true = (np.stack(side) for side in zip(*count_pairs))
        scores["attack.label_count_exact"] = metrics.label_count_accuracy(predicted, true)["vector_exact"]
    width = max(s.truth.shape[0] for s in per_victim)
    pad = lambda arrays: np.stack([np.concatenate([a, np.zeros((width - a.shape[0], *a.shape[1:]), a.dtype)])
                                   for a in arrays])
    return scores, pad([s.truth for s in per_victim]), pad([s.reconstructed for s in per_victim])


def score_tabular(result: TabularRecoveryResult, truth: RoundTruth) -> Scored:
    """Per-feature accuracy of reconstructed rows against EVERY record the victims used that round.

    Rows are decoded to raw values and paired with ``metrics.assign_records`` on the
    fraction of features wrong (``fedpriv.metrics.tabular``); a numeric feature is a hit
    within 0.319 standard deviations of the training cohort's column (TabLeak's
    tolerance), a categorical one when exact; a record without a reconstruction counts
    every feature as wrong.
    """
    cohort, client_data = truth.cohort, truth.client_data
    is_categorical = cohort.is_categorical
    tolerance = tabular_metrics.numeric_tolerance(cohort.values, is_categorical)
    hits, missing, leaks = [], 0, []
    for position, client in enumerate(truth.victim_clients):
        true_values = cohort.decode(_victim_records(client_data, client, cohort.input_shape)[0])
        recovered = cohort.decode(np.asarray(result.records.inputs[position]).reshape(-1, cohort.input_shape[0]))
        scored = tabular_metrics.score_table_records(recovered, true_values, is_categorical, tolerance)
        hits.append(scored.hits)
        missing += len(scored.missing)
        leaks.append(VictimLeak(client, _table_rows(cohort, true_values[scored.truth_index]),
                                _table_rows(cohort, recovered[scored.reconstruction_index])))
    hits = np.concatenate(hits)
    if not hits.size:
        return Scored({"attack.records_scored": 0})
    results = {f"attack.tabular_{name}": value
               for name, value in tabular_metrics.tabular_accuracy(hits, is_categorical).items()}
    results.update({f"attack.feature_accuracy.{column.name}": float(column_hits.mean())
                    for column, column_hits in zip(cohort.columns, hits.T)})
    results.update({"attack.records_scored": int(hits.shape[0]), "attack.records_missing": int(missing),
                    "attack.entropy_categorical": _mean_or_nan(result.entropy[..., is_categorical]),
                    "attack.numeric_tolerance_std": tabular_metrics.TABLEAK_TOLERANCE})
    return Scored(results, leaks=tuple(leaks))


def _mean_or_nan(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else float("nan")


def _table_rows(cohort, values: np.ndarray) -> tuple[str, ...]:
    """Each row as a person reads it: ``name=value unit`` for numerics, the category name otherwise."""
    cell = lambda column, value: (f"{column.name}={column.categories[int(value)]}" if column.type == "categorical"
                                  else f"{column.name}={value:.4g}{' ' + column.unit if column.unit else ''}")
    return tuple(", ".join(cell(column, value) for column, value in zip(cohort.columns, row)) for row in values)


# The scorer of each attack kind (``Attack.kind``): ``(result, truth) -> Scored``.
SCORERS = {"images": score_reconstruction, "codes": score_codes, "tokens": score_tokens, "tabular": score_tabular}
