"""DAGER against the gradient-matching token attack on the notes Transformer, by batch and DP noise.

    python scripts/bench/dager_recovery.py                      # the table and dager_recovery.csv
    python scripts/bench/dager_recovery.py --batches 1 2 --sigmas 1e-4 --out /tmp/d.csv

The notes preset (``conf/model/transformer.yaml``: width 64, 4 heads, 2 blocks, MLP 128, mean
pooling; ``conf/data/notes.yaml``: notes of at most 64 tokens), untrained, FedSGD with learning
rate 1. Each row attacks ``--victims`` hospitals that each send the gradient of one batch of
``B`` notes, and scores every true note (paired with the recovered ones by ROUGE-L, as the
scenario's scorer does): ROUGE-1/2 F1, the rate of notes recovered token for token, and term
F1 (the set of clinical words recovered per note). DAGER needs fewer real tokens per batch
than the width (Petrov et al. 2024, arXiv:2405.15586); the notes have 24-57 tokens, so with
width 64 only ``B = 1`` satisfies it; ``--width`` repeats the table on a wider model. The
DP rows add Gaussian noise of stddev sigma to every coordinate of each update (the attacker
is told sigma, as ``SideKnowledge.noise_stddev``). The token_recovery comparison runs with
fewer iterations than its preset (``--token-iterations``) and only at the smallest batches.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fedpriv import metrics  # noqa: E402
from fedpriv.attacks.dager import DagerConfig  # noqa: E402
from fedpriv.attacks.protocol import PublicKnowledge, SideKnowledge  # noqa: E402
from fedpriv.attacks.tokens import TokenRecoveryConfig  # noqa: E402
from fedpriv.data.notes import NotesConfig, make_notes_cohort  # noqa: E402
from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update  # noqa: E402
from fedpriv.metrics import tokens as token_metrics  # noqa: E402
from fedpriv.models.transformer import transformer  # noqa: E402
from fedpriv.public.clinical_words import clinical_vocabulary  # noqa: E402
from fedpriv.typing import ClientData, Observation, ProtocolMetadata  # noqa: E402

MAX_LEN = 64


def observe(model, params, x, y) -> Observation:
    """FedSGD updates (learning rate 1) of hospitals holding ``x [C, 1, B, L]``."""
    clients, steps, batch = y.shape
    run = for_each_client(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), "vmap")
    data = ClientData(examples={"x": jnp.asarray(x), "y": jnp.asarray(y)},
                      example_mask=jnp.ones((clients, steps, batch)), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros((clients, steps, batch), jnp.int32))
    updates, _ = jax.jit(run)(params, data, jax.random.split(jax.random.key(0), clients))
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=steps, batch_size=batch, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(clients)))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)


def add_noise(observation: Observation, sigma: float, key) -> Observation:
    leaves, tree = jax.tree_util.tree_flatten(observation.updates)
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + sigma * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return Observation(params=observation.params, updates=jax.tree_util.tree_unflatten(tree, noisy),
                       aggregated=False, round_index=0, metadata=observation.metadata)


def score(recovered: np.ndarray, true: np.ndarray) -> dict:
    """Mean scores over every true note ``[V, B, L]``, paired by ROUGE-L (Hungarian)."""
    rows = []
    for mine, theirs in zip(recovered, true):
        costs = np.array([[1.0 - token_metrics.rouge_l(r[None], t[None]) for t in theirs] for r in mine])
        pairs = metrics.assign_records(costs)
        for r, t in zip(pairs.reconstruction_index, pairs.truth_index):
            rows.append(dict(token_metrics.token_scores(mine[r], theirs[t]), exact=float(np.array_equal(mine[r],
                                                                                                        theirs[t]))))
        rows += [dict(rouge1_f1=0.0, rouge2_f1=0.0, term_f1=0.0, exact=0.0) for _ in pairs.missing]
    return {name: float(np.mean([row[name] for row in rows])) for name in ("rouge1_f1", "rouge2_f1", "exact",
                                                                            "term_f1")}


def run(attack, observation, true, labels, sigma: float) -> tuple[dict, float]:
    """Scores and seconds of one attack; the gradient-matching one is given the true labels."""
    side = SideKnowledge(labels=labels if attack.needs_known_labels else None, noise_stddev=sigma)
    started = time.perf_counter()
    result = attack(observation, jax.random.key(1), victims=list(range(true.shape[0])), side_knowledge=side)
    seconds = time.perf_counter() - started
    recovered = np.asarray(result.notes.inputs)[:, 0]
    return score(recovered, true), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--sigmas", type=float, nargs="*", default=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--noise-batch", type=int, default=1, help="batch of the DP rows")
    parser.add_argument("--victims", type=int, default=2)
    parser.add_argument("--width", type=int, default=64, help="embedding_dim (the preset's is 64)")
    parser.add_argument("--token-batches", type=int, nargs="*", default=[1], help="batches token_recovery runs at")
    parser.add_argument("--token-iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("dager_recovery.csv"))
    args = parser.parse_args()

    vocabulary = clinical_vocabulary()
    # The cohort depends on its size: a fixed size keeps the notes of every row the same.
    needed = max(args.victims * max(args.batches + [args.noise_batch]), 64)
    cohort = make_notes_cohort(NotesConfig(num_records=needed, num_sites=4, max_len=MAX_LEN), np.random.default_rng(0))
    model = transformer((MAX_LEN,), 8, vocabulary_size=vocabulary.size, embedding_dim=args.width, num_heads=4,
                        num_layers=2, mlp_dim=128)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, MAX_LEN), jnp.int32))
    public = PublicKnowledge(compilation=None)
    attacks = {"dager": DagerConfig().make(model, public),
               "token_recovery": TokenRecoveryConfig(iterations=args.token_iterations, restarts=1,
                                                     label_strategy="known").make(model, public)}
    cells = [(b, 0.0) for b in args.batches] + [(args.noise_batch, s) for s in args.sigmas]
    rows = []
    for batch, sigma in cells:
        count = args.victims * batch
        x = cohort.tokens[:count].reshape(args.victims, 1, batch, MAX_LEN)
        y = cohort.labels[:count].reshape(args.victims, 1, batch)
        observation = observe(model, params, x, y)
        tokens = int(np.max(np.sum(x != 0, axis=(1, 2, 3))))
        update_rms = float(jnp.sqrt(jnp.mean(observation.updates["block_0"]["query"]["kernel"] ** 2)))
        if sigma > 0:
            observation = add_noise(observation, sigma, jax.random.key(7))
        for name, attack in attacks.items():
            if name == "token_recovery" and (batch not in args.token_batches or sigma > 0):
                continue
            scores, seconds = run(attack, observation, x[:, 0], y, sigma)
            rows.append(dict(attack=name, width=args.width, batch=batch, sigma=sigma, tokens=tokens,
                             query_update_rms=update_rms, **scores, seconds=seconds))
            print(_line(rows[-1]), flush=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


def _line(row: dict) -> str:
    return (f"{row['attack']:>14} width {row['width']:>3} batch {row['batch']:>2} sigma {row['sigma']:<7g} "
            f"tokens/hospital {row['tokens']:>4} | ROUGE-1 {row['rouge1_f1']:.3f} ROUGE-2 {row['rouge2_f1']:.3f} "
            f"exact {row['exact']:.3f} term F1 {row['term_f1']:.3f} | {row['seconds']:.1f} s")


if __name__ == "__main__":
    main()
