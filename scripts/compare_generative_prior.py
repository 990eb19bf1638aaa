"""Generative-prior inversion (GIAS) vs pixel-space Inverting Gradients, with and without DP noise.

Victim phantoms, an untrained width-16 ConvNet (or DLG's LeNet), FedSGD with batch 1. The server sees
the hospital's DP-SGD update (``fedpriv.defenses.DPSGDPlan``: clip the example's gradient
to ``--clip``, add ``N(0, (sigma * clip)^2)`` per coordinate, divide by the batch of 1)
for each noise multiplier ``sigma``; ``sigma = 0`` is clipping only, which a cosine
objective cannot see at batch 1. The prior is a VAE trained on another synthetic
hospital: phantoms from a different data stream, passed through another scanner.
Both attacks get the same total iteration budget; the table prints PSNR and SSIM
against the victim and the attack's wall-clock seconds (compilation included).

    python scripts/compare_generative_prior.py --iterations 400 --victims 2
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.attacks.generative_prior import GenerativePriorConfig, invert_with_prior
from fedpriv.attacks.image_prior import ImagePriorConfig, train_image_prior
from fedpriv.attacks.inverting_gradients import InvertingGradientsConfig, invert_gradients
from fedpriv.data.phantoms import make_phantom_cohort
from fedpriv.data.sites import apply_scanner_profile, sample_scanner_profiles
from fedpriv.defenses.dp_sgd import DPSGDPlan
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update
from fedpriv.metrics.image import psnr, ssim
from fedpriv.models.registry import make_model
from fedpriv.typing import Observation, ProtocolMetadata

IMAGE_SIZE = 32


def public_images(num_images: int, data_seed: int) -> np.ndarray:
    """Another hospital's phantoms: a separate data stream and its own scanner profile."""
    generator = np.random.default_rng(data_seed)
    images = make_phantom_cohort(num_images, IMAGE_SIZE, generator).images
    (profile,) = sample_scanner_profiles(1, generator)
    return apply_scanner_profile(images, profile, generator)


def dp_observation(model, params, images, labels, noise_multiplier: float, clip: float, key) -> Observation:
    """The server's view of one FedSGD round of batch-1 DP-SGD clients (one per image)."""
    plan = DPSGDPlan(l2_clip_norm=clip, noise_multiplier=noise_multiplier, sampling_rate=1.0, steps=1,
                     expected_batch_size=1.0)
    client = jax.jit(make_client_update(model, LocalTrainingConfig(learning_rate=1.0), dp_plan=plan))
    updates = []
    for index, client_key in enumerate(jax.random.split(key, len(images))):
        update, _ = client(params, {"x": jnp.asarray(images[index]).reshape(1, 1, *images.shape[1:]),
                                    "y": jnp.asarray(labels[index]).reshape(1, 1)},
                           jnp.ones((1, 1)), client_key)
        updates.append(update)
    updates = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *updates)
    metadata = ProtocolMetadata(algorithm="fedsgd", local_steps=1, batch_size=1, learning_rate=1.0,
                                input_shape=model.input_shape, num_classes=model.num_classes,
                                client_ids=tuple(range(len(images))))
    return Observation(params=params, updates=updates, aggregated=False, round_index=0, metadata=metadata)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400, help="attack budget, both attacks")
    parser.add_argument("--finetune-iterations", type=int, default=100, help="of the prior's budget")
    parser.add_argument("--victims", type=int, default=2)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.5])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--model", choices=("convnet", "lenet"), default="convnet",
                        help="width-16 ConvNet of Inverting Gradients or DLG's LeNet")
    parser.add_argument("--prior-steps", type=int, default=400)
    parser.add_argument("--public-images", type=int, default=512)
    args = parser.parse_args()

    victims_cohort = make_phantom_cohort(16, IMAGE_SIZE, np.random.default_rng(0))
    images = victims_cohort.images[: args.victims]
    labels = victims_cohort.labels[: args.victims]
    options = {"width": 16} if args.model == "convnet" else {}
    model = make_model(args.model, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1), num_classes=4, **options)
    params = model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1)))

    public = public_images(args.public_images, data_seed=1)
    start = time.perf_counter()
    prior = train_image_prior(public, ImagePriorConfig(steps=args.prior_steps), jax.random.key(1))
    jax.block_until_ready(prior.decoder_params)
    prior_seconds = time.perf_counter() - start
    mean_image = np.broadcast_to(public.mean(0), images.shape)
    print(f"prior: VAE trained on {len(public)} public images in {prior_seconds:.1f} s; "
          f"public mean image vs victims PSNR {float(np.mean(psnr(mean_image, images))):.2f} dB")

    pixel_config = InvertingGradientsConfig(iterations=args.iterations, tv_weight=1e-4)
    prior_config = GenerativePriorConfig(latent_iterations=args.iterations - args.finetune_iterations,
                                         finetune_iterations=args.finetune_iterations)
    # What the prior gives with no gradient at all: the attack's own starting images
    # (same key and shapes as invert_with_prior with one restart).
    start_images = prior.decode(prior_config.latent_init_std * jax.random.normal(
        jax.random.key(3), (args.victims, 1, 1, prior.latent_dim))).reshape(images.shape)
    print(f"prior start (decoded initial latents, no gradient) vs victims: PSNR "
          f"{float(np.mean(psnr(start_images, images))):.2f} dB, SSIM {float(np.mean(ssim(start_images, images))):.3f}")
    print(f"{'sigma':>6} {'attack':>7} {'PSNR dB':>8} {'SSIM':>6} {'seconds':>8}")
    for sigma in args.sigmas:
        observation = dp_observation(model, params, images, labels, sigma, args.clip, jax.random.key(2))
        victims = list(range(args.victims))
        for name, attack in (
                ("pixel", lambda: invert_gradients(observation, model, pixel_config, jax.random.key(3),
                                                   victims=victims)),
                ("prior", lambda: invert_with_prior(observation, model, prior, prior_config, jax.random.key(3),
                                                    victims=victims))):
            start = time.perf_counter()
            result = attack()
            seconds = time.perf_counter() - start
            reconstructed = result.inputs.reshape(images.shape)
            print(f"{sigma:6.2f} {name:>7} {float(np.mean(psnr(reconstructed, images))):8.2f} "
                  f"{float(np.mean(ssim(reconstructed, images))):6.3f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
