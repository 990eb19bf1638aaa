"""Times how attack and client loops are compiled, side by side in one run (DESIGN §5).

    python scripts/benchmark_compilation.py            # full table (a few minutes on 2 cores)
    python scripts/benchmark_compilation.py --quick    # smaller sizes

Prints one table. Attack rows: seconds per Inverting-Gradients iteration per candidate
(victim x restart), after a warm-up call that pays compilation. Client rows: seconds for
one round of C clients x S local steps. Compare ratios within one run: machines are shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedpriv.attacks import AttackCompilation, InvertingGradientsConfig, invert_gradients  # noqa: E402
from fedpriv.federated import (LocalTrainingConfig, for_each_client, make_client_update,  # noqa: E402
                               make_round, init_server_state, initial_stage_states, make_server_optimizer)
from fedpriv.defenses.plans import BatchSampling, NoPrivacy  # noqa: E402
from fedpriv.defenses.server_stages import ServerPipeline  # noqa: E402
from fedpriv.models import make_model  # noqa: E402
from fedpriv.typing import ClientData, Observation, ProtocolMetadata  # noqa: E402


def fedsgd_observation(model, params, x, y):
    run = jax.jit(for_each_client(make_client_update(model, LocalTrainingConfig(learning_rate=1.0)), "vmap"))
    clients = y.shape[0]
    data = ClientData(examples={"x": x, "y": y}, example_mask=jnp.ones(y.shape), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros(y.shape, jnp.int32))
    updates, _ = run(params, data, jax.random.split(jax.random.key(0), clients))
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=y.shape[2], learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(clients)))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)


def time_attack(model_name, input_shape, options, compilation, victims, restarts, iterations):
    model = make_model(model_name, input_shape=input_shape, num_classes=10, **options)
    params = model.init(jax.random.key(0), jnp.zeros((1, *input_shape)))
    x = jax.random.uniform(jax.random.key(1), (victims, 1, 1, *input_shape))
    y = jnp.arange(victims, dtype=jnp.int32).reshape(victims, 1, 1) % 10
    observation = fedsgd_observation(model, params, x, y)
    config = InvertingGradientsConfig(iterations=iterations, restarts=restarts, label_strategy="idlg")
    run = lambda: invert_gradients(observation, model, config, jax.random.key(2), victims=range(victims),
                                   compilation=compilation)
    run()  # compile
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / (iterations * victims * restarts)


def time_clients(model_name, options, backend, clients, steps, batch, rounds=2):
    model = make_model(model_name, input_shape=(32, 32, 1), num_classes=4, **options)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    optimizer = make_server_optimizer("sgd", 1.0)
    plan, pipeline = NoPrivacy(batch_sampling=BatchSampling(kind="shuffle", capacity=batch)), ServerPipeline()
    round_function = make_round(make_client_update(model, LocalTrainingConfig(learning_rate=0.05)), optimizer,
                                backend=backend, pipeline=pipeline, weights=plan.aggregation_weights)
    x = jax.random.uniform(jax.random.key(1), (clients, steps, batch, 32, 32, 1))
    data = ClientData(examples={"x": x, "y": jnp.zeros((clients, steps, batch), jnp.int32)},
                      example_mask=jnp.ones((clients, steps, batch)), client_mask=jnp.ones(clients),
                      record_ids=jnp.zeros((clients, steps, batch), jnp.int32))
    state = init_server_state(params, optimizer)
    keys = jax.random.split(jax.random.key(2), clients)
    stage_states, noise = initial_stage_states(pipeline, jax.random.key(3)), plan.round_noise(0).traced()
    state = round_function(state, data, keys, stage_states, noise).state  # compile
    jax.block_until_ready(state.params)
    start = time.perf_counter()
    for _ in range(rounds):
        state = round_function(state, data, keys, stage_states, noise).state
    jax.block_until_ready(state.params)
    return (time.perf_counter() - start) / rounds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--iterations", type=int, default=None, help="attack iterations timed per variant")
    parser.add_argument("--variants", default="host/loop,scan/loop,host/vmap,scan/vmap,scan/map",
                        help="comma-separated LOOP/BATCHING pairs (ConvNet-64 under vmap takes seconds per step)")
    args = parser.parse_args(argv)
    iterations = args.iterations or (10 if args.quick else 30)
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    attack_models = [("convnet", (32, 32, 3), {"width": 64}), ("convnet", (32, 32, 1), {"width": 64}),
                     ("convnet", (32, 32, 1), {"width": 16}), ("lenet", (32, 32, 3), {}),
                     ("mlp", (32, 32, 1), {})]
    if args.quick:
        attack_models = attack_models[2:]
    victims, restarts = (2, 2)
    print(f"jax {jax.__version__} on {jax.default_backend()}; attack: {victims} victims x {restarts} restarts, "
          f"batch 1, {iterations} iterations")
    print(f"{'attack model':<28} " + " ".join(f"{l + '/' + b:>12}" for l, b in variants) + "   (s/iteration/candidate)")
    for name, shape, options in attack_models:
        cells = []
        for loop, batching in variants:
            seconds = time_attack(name, shape, options, AttackCompilation(loop=loop, batching=batching,
                                                                          scan_chunk=iterations),
                                  victims, restarts, iterations)
            cells.append(f"{seconds:12.4f}")
        label = f"{name}{options.get('width', '')} {'x'.join(map(str, shape))}"
        print(f"{label:<28} " + " ".join(cells))
    clients, steps, batch = (4, 2, 8) if args.quick else (8, 5, 8)
    print(f"\nclients: {clients} clients x {steps} local steps, batch {batch}, 32x32x1   (s/round)")
    print(f"{'client model':<28} {'loop':>12} {'vmap':>12}")
    for name, options in (("convnet", {"width": 16}), ("lenet", {}), ("mlp", {})):
        cells = [f"{time_clients(name, options, backend, clients, steps, batch):12.3f}" for backend in ("loop", "vmap")]
        print(f"{name + str(options.get('width', '')):<28} " + " ".join(cells))


if __name__ == "__main__":
    main()
