"""Integrated gradients for the explanations API, without depending on captum.

TorchServe's vision handlers call captum's `IntegratedGradients(model).attribute(x, target=t,
n_steps=15)`; this computes the same attribution with the same quadrature (Gauss-Legendre on
[0, 1], baseline zero), so `/explanations` answers match TorchServe's to float tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy
import torch


def integrated_gradients(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    target: int | Sequence[int] = 0,
    n_steps: int = 15,
) -> torch.Tensor:
    """Attribution of output[:, target] to each input element, integrated from a zero baseline."""
    points, weights = numpy.polynomial.legendre.leggauss(n_steps)
    alphas = (points + 1.0) / 2.0
    step_sizes = weights / 2.0
    inputs = inputs.detach()
    total = torch.zeros_like(inputs)
    if isinstance(target, int):
        index = torch.full((inputs.shape[0], 1), target, device=inputs.device)
    else:
        index = torch.as_tensor(list(target), device=inputs.device).reshape(-1, 1)
    with torch.inference_mode(False), torch.enable_grad():
        for alpha, step in zip(alphas.tolist(), step_sizes.tolist(), strict=True):
            scaled = (alpha * inputs).requires_grad_(True)
            selected = model(scaled).gather(1, index).sum()
            (gradient,) = torch.autograd.grad(selected, scaled)
            total += step * gradient
    return total * inputs
