"""The PyTorch peer of one Inverting-Gradients step, for ``benchmark_attacks.py`` only.

The same ConvNet-64 as ``fedpriv.models.convnet`` (eight 3x3 convolutions with GroupNorm,
max-pools after the sixth and eighth, a linear head) and the same step as breaching and
inversefed run it: the gradient of the cosine distance between the candidate's parameter
gradient (``create_graph=True``) and the observed one, taken with respect to the input,
then signed Adam. PyTorch is imported by the caller; the library never uses it.
"""

from __future__ import annotations

import math
import time

WIDTH_MULTIPLIERS = (1, 2, 2, 4, 4, 4, 4, 4)
POOL_AFTER = (5, 7)


def _convnet(torch, channels_in: int, width: int, num_classes: int, side: int):
    layers = []
    channels = channels_in
    for index, multiplier in enumerate(WIDTH_MULTIPLIERS):
        out = multiplier * width
        layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.GroupNorm(math.gcd(8, out), out),
                   torch.nn.ReLU()]
        if index in POOL_AFTER:
            layers.append(torch.nn.MaxPool2d(3))
            side //= 3
        channels = out
    layers += [torch.nn.Flatten(), torch.nn.Linear(channels * side * side, num_classes)]
    return torch.nn.Sequential(*layers)


def time_torch_ig_step(torch, *, iterations: int, width: int = 64, side: int = 32, channels: int = 3) -> float:
    """Seconds per IG iteration (batch 1, one candidate) after two warm-up steps."""
    torch.manual_seed(0)
    model = _convnet(torch, channels, width, 10, side)
    parameters = list(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    truth = torch.rand(1, channels, side, side)
    label = torch.tensor([3])
    target = [g.detach() for g in torch.autograd.grad(loss_fn(model(truth), label), parameters)]
    candidate = torch.rand(1, channels, side, side, requires_grad=True)
    optimizer = torch.optim.Adam([candidate], lr=0.1)

    def step():
        optimizer.zero_grad()
        gradient = torch.autograd.grad(loss_fn(model(candidate), label), parameters, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(gradient, target))
        norm = torch.sqrt(sum((g * g).sum() for g in gradient)) * torch.sqrt(sum((t * t).sum() for t in target))
        distance = 1 - dot / norm
        distance.backward()
        candidate.grad.sign_()
        optimizer.step()
        with torch.no_grad():
            candidate.clamp_(0, 1)

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations
