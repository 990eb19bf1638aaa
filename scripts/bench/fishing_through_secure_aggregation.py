"""Class fishing through secure aggregation: target recovery vs hospitals, and client-side screening.

    python scripts/bench/fishing_through_secure_aggregation.py                 # 4, 8, 16, 32 hospitals
    python scripts/bench/fishing_through_secure_aggregation.py --hospitals 8 --iterations 100

FedSGD rounds (``--seeds`` per hospital count; batch 1 per hospital, each hospital one record drawn at random from a
phantom CT cohort, 16x16, 4 classes) of DLG's LeNet crafted for class fishing
(``fedpriv.attacks.fishing``; Wen et al. 2022, arXiv 2202.00580). The hospitals' updates
go through the real Bonawitz et al. protocol (``fedpriv.defenses.secure_aggregation.
secure_sum``: key agreement, PRF masks, Shamir shares, fixed point); the server inverts
the mean it decodes. Per hospital count: how many records of the target class the round
held, PSNR/SSIM of the reconstruction against each of them (the best one) and against
the public-mean guess, whether the best-matching record of the WHOLE round is of the
target class, and seconds. Then client-side model screening
(``fedpriv.defenses.model_screening``, ``conf/defense/model_screening.yaml`` defaults)
on fished and honest initialisations: detection rate, false positives, and the rounds
whose leak is prevented (a refused model sends no update). Writes the rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fedpriv.attacks import AttackCompilation, FishingConfig, PublicKnowledge  # noqa: E402
from fedpriv.data.phantoms import make_phantom_cohort  # noqa: E402
from fedpriv.defenses.model_screening import ModelScreeningConfig, screen_model  # noqa: E402
from fedpriv.defenses.secure_aggregation import Dropouts, SecureAggregationConfig, secure_sum  # noqa: E402
from fedpriv.federated import LocalTrainingConfig, for_each_client, make_client_update  # noqa: E402
from fedpriv.metrics import record_scores  # noqa: E402
from fedpriv.models import make_model  # noqa: E402
from fedpriv.typing import ClientData, Observation, ProtocolMetadata  # noqa: E402

SHAPE = (16, 16, 1)  # LeNet inverts 16x16 phantoms in 400 steps; 32x32 needs more than a 5-minute bench
CLASSES = 4
TARGET = 0


def secure_round(model, params, x, y, key) -> tuple[Observation, float]:
    """Every hospital's FedSGD update (one record each), summed by secure aggregation; the mean."""
    clients = len(y)
    run = for_each_client(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), "loop")
    data = ClientData(examples={"x": jnp.asarray(x[:, None, None]), "y": jnp.asarray(y[:, None, None])},
                      example_mask=jnp.ones((clients, 1, 1)), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros((clients, 1, 1), jnp.int32))
    updates, _ = run(params, data, jax.random.split(key, clients))
    config = SecureAggregationConfig(num_clients=clients, threshold=max(2, math.ceil(0.67 * clients)),
                                     clip_range=1.0, fixed_point_scale=float(1 << 20), prf="aes-ctr")
    started = time.perf_counter()
    total, _ = secure_sum(updates, config, key, Dropouts())
    seconds = time.perf_counter() - started
    mean = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32)[None] / clients, total)
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=1, learning_rate=1.0,
                                input_shape=SHAPE, num_classes=CLASSES, client_ids=(0,))
    return Observation(params=params, updates=mean, aggregated=True, round_index=0, metadata=metadata), seconds


def recovery_row(hospitals: int, iterations: int, cohort, public, seed: int) -> dict:
    """One fished round through secure aggregation with ``hospitals`` hospitals, scored."""
    model = make_model("lenet", input_shape=SHAPE, num_classes=CLASSES)
    attack = FishingConfig(target_class=TARGET, iterations=iterations).make(
        model, PublicKnowledge(compilation=AttackCompilation(), images=public))
    params = attack.model.init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))
    chosen = np.random.default_rng(seed).choice(len(cohort.labels), hospitals, replace=False)
    x, y = cohort.images[chosen], cohort.labels[chosen].astype(np.int32)
    observation, secagg_seconds = secure_round(attack.model, params, x, y, jax.random.key(seed + 1))
    started = time.perf_counter()
    result = attack(observation, jax.random.key(seed + 2), victims=[0])
    attack_seconds = time.perf_counter() - started
    psnr_db, ssim = record_scores.score_guess(result.inputs.reshape(SHAPE), x)
    targets = np.flatnonzero(y == TARGET)
    row = {"setting": f"secure_aggregation, {hospitals} hospitals", "hospitals": hospitals, "seed": seed,
           "target_records": len(targets), "best_match_is_target": bool(y[np.argmax(psnr_db)] == TARGET),
           "secagg_seconds": secagg_seconds, "attack_seconds": attack_seconds}
    if len(targets):
        baseline_db, baseline_ssim = record_scores.score_guess(public.mean(axis=0), x[targets])
        best = targets[np.argmax(psnr_db[targets])]
        others = np.delete(psnr_db, targets)
        row.update({"target_psnr_db": float(psnr_db[best]), "target_ssim": float(ssim[best]),
                    "baseline_psnr_db": float(baseline_db.max()), "baseline_ssim": float(baseline_ssim.max()),
                    "best_other_psnr_db": float(others.max()) if others.size else float("nan")})
    return row


def screening_rows(trials: int, public) -> list[dict]:
    """Client-side screening of ``trials`` fished and honest initialisations per model."""
    rows = []
    config = ModelScreeningConfig()  # the defaults conf/defense/model_screening.yaml sets
    knowledge, zeros = PublicKnowledge(compilation=AttackCompilation(), images=public), jnp.zeros((1, *SHAPE))
    for name in ("lenet", "mlp"):
        model = make_model(name, input_shape=SHAPE, num_classes=CLASSES)
        started = time.perf_counter()
        # Unjitted: jit would fold the 512 public images into each program as constants (70 s to compile).
        honest = model.init
        fished = [FishingConfig(target_class=c).make(model, knowledge).model.init for c in range(CLASSES)]
        refused = {"fished": 0, "honest": 0}
        for trial in range(trials):
            key = jax.random.key(100 + trial)
            refused["fished"] += not screen_model(fished[trial % CLASSES](key, zeros), config=config).accepted
            refused["honest"] += not screen_model(honest(key, zeros), config=config).accepted
        rows.append({"setting": f"model_screening, {name}", "trials": trials,
                     "detection_rate": refused["fished"] / trials, "false_positive_rate": refused["honest"] / trials,
                     # A refused model is never trained on: that round sends nothing to aggregate.
                     "leaks_prevented": refused["fished"] / trials,
                     "screen_seconds": time.perf_counter() - started})
    return rows


def print_table(rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=2, help="rounds (record draws and inits) per hospital count")
    parser.add_argument("--screening-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=Path("fishing_through_secure_aggregation.csv"))
    arguments = parser.parse_args()
    cohort = make_phantom_cohort(400, SHAPE[0], np.random.default_rng(arguments.seed))
    public = make_phantom_cohort(512, SHAPE[0], np.random.default_rng(arguments.seed + 1)).images  # other patients
    rows = [recovery_row(h, arguments.iterations, cohort, public, arguments.seed + s)
            for h in arguments.hospitals for s in range(arguments.seeds)]
    rows += screening_rows(arguments.screening_trials, public)
    print_table(rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with arguments.csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {arguments.csv}")


if __name__ == "__main__":
    main()
