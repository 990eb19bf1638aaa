"""Times the attacks: seconds per iteration, throughput of many candidates, recompilation.

    python scripts/benchmark_attacks.py            # full table (several minutes on 2 cores)
    python scripts/benchmark_attacks.py --quick    # fewer iterations, no ConvNet-64 throughput row

Rows (untrained models, FedSGD, batch 1, one observation of V victims):
- Inverting Gradients per iteration per candidate: ConvNet-64 on 32x32x3 and LeNet, with
  the compilation ``impl=auto`` picks on this machine.
- Throughput: 16 victims x 4 restarts in ONE call, candidates x iterations per second.
- Reuse: the first call of a setting compiles; a call on other victims (and another
  observation of the same protocol) does not — the seconds of both and the number of
  compiled programs are printed.
- DLG (L-BFGS) on LeNet, the generative prior's latent search, imprint and code recovery.
With ``torch`` installed (``pip install torch==2.13.0``, CPU), the same IG step of ConvNet-64
is timed in PyTorch, as breaching runs it, for a side-by-side ratio.
Compare ratios within one run: machines are shared.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_compilation import fedsgd_observation  # noqa: E402
from fedpriv.attacks import (AttackCompilation, DLGConfig, InvertingGradientsConfig, deep_leakage,  # noqa: E402
                             invert_gradients, inverting_gradients)
from fedpriv.compilation import choose_compilation  # noqa: E402
from fedpriv.models import make_model  # noqa: E402


def observation_for(model_name, input_shape, options, victims, num_classes=10):
    model = make_model(model_name, input_shape=input_shape, num_classes=num_classes, **options)
    params = model.init(jax.random.key(0), jnp.zeros((1, *input_shape)))
    x = jax.random.uniform(jax.random.key(1), (victims, 1, 1, *input_shape))
    y = (jnp.arange(victims, dtype=jnp.int32).reshape(victims, 1, 1) % num_classes)
    return model, fedsgd_observation(model, params, x, y)


def auto_compilation(model_name) -> AttackCompilation:
    choice = choose_compilation(model_name)
    return AttackCompilation(loop=choice.attack_loop, batching=choice.attack_batching, scan_chunk=25)


def timed(run):
    start = time.perf_counter()
    result = run()
    jax.block_until_ready(jax.tree_util.tree_leaves(result.inputs if hasattr(result, "inputs") else result))
    return time.perf_counter() - start


def ig_rows(args):
    rows = []
    for label, name, shape, options in (("ConvNet-64 32x32x3", "convnet", (32, 32, 3), {"width": 64}),
                                        ("LeNet 32x32x3", "lenet", (32, 32, 3), {})):
        iterations = args.iterations
        model, observation = observation_for(name, shape, options, victims=1)
        config = InvertingGradientsConfig(iterations=iterations, label_strategy="idlg")
        compilation = auto_compilation(name)
        run = lambda: invert_gradients(observation, model, config, jax.random.key(2), victims=[0],
                                       compilation=compilation)
        first = timed(run)
        second = timed(run)
        rows.append((f"IG {label}, 1 candidate", f"{second / iterations * 1e3:.2f} ms/it",
                     f"first call {first:.1f} s (compiles)"))
    return rows


def throughput_rows(args):
    rows = []
    models = [("LeNet 32x32x3", "lenet", (32, 32, 3), {}), ("ConvNet-16 32x32x1", "convnet", (32, 32, 1),
                                                               {"width": 16})]
    if not args.quick:
        models.append(("ConvNet-64 32x32x3", "convnet", (32, 32, 3), {"width": 64}))
    for label, name, shape, options in models:
        iterations = max(2, args.iterations // 4) if name == "convnet" else args.iterations
        model, observation = observation_for(name, shape, options, victims=32)
        config = InvertingGradientsConfig(iterations=iterations, restarts=4, label_strategy="idlg")
        compilation = auto_compilation(name)
        inverting_gradients._compiled_programs.cache_clear()
        first = timed(lambda: invert_gradients(observation, model, config, jax.random.key(2), victims=range(16),
                                               compilation=compilation))
        other = timed(lambda: invert_gradients(observation, model, config, jax.random.key(3), victims=range(16, 32),
                                               compilation=compilation))
        programs = inverting_gradients._compiled_programs.cache_info().currsize
        rate = 16 * 4 * iterations / other
        rows.append((f"IG {label}, 16 victims x 4 restarts ({compilation.loop}/{compilation.batching})",
                     f"{rate:.1f} candidate-it/s",
                     f"first {first:.1f} s, other victims {other:.1f} s, {programs} compiled program set(s)"))
    return rows


def dlg_row(args):
    model, observation = observation_for("lenet", (32, 32, 3), {}, victims=1)
    config = DLGConfig(iterations=args.iterations, label_strategy="joint")
    compilation = AttackCompilation(loop="host", batching="loop")
    run = lambda: deep_leakage(observation, model, config, jax.random.key(2), victims=[0], compilation=compilation)
    first = timed(run)
    second = timed(run)
    return [(f"DLG L-BFGS LeNet 32x32x3, 1 candidate", f"{second / args.iterations * 1e3:.2f} ms/it",
             f"first call {first:.1f} s (compiles)")]


def torch_row(args):
    try:
        import torch
    except ImportError:
        return [("PyTorch IG ConvNet-64 32x32x3", "skipped", "torch is not installed (pip install torch==2.13.0)")]
    from torch_peer import time_torch_ig_step  # the PyTorch peer lives beside this script
    seconds = time_torch_ig_step(torch, iterations=args.iterations)
    return [("PyTorch IG ConvNet-64 32x32x3, 1 candidate", f"{seconds * 1e3:.2f} ms/it",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args(argv)
    args.iterations = args.iterations or (8 if args.quick else 40)
    print(f"jax {jax.__version__} on {jax.default_backend()}, {args.iterations} iterations per timing")
    rows = ig_rows(args) + torch_row(args) + throughput_rows(args) + dlg_row(args)
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    main()
