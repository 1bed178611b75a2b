"""Linear probe on frozen features, on the model's device (for the GPU run of ``reproduce_gpu.py``).

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) judge fine-tuning and
pruning by downstream accuracy. ``reproduce_paper.py`` fits scikit-learn's ``LogisticRegression``
on the CPU (one BLAS thread); the GPU run probes about 20 encoders in a minute or so, so this
module fits the same model, multinomial logistic regression on standardised features with
scikit-learn's objective ``C · Σ_i CE_i + ½‖W‖²`` (intercept not penalised), with full-batch
L-BFGS on the features' device. ``tests/test_reproduce_gpu.py`` checks it against scikit-learn.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


@torch.no_grad()
def features(backbone: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Eval-mode features (flattened) of uint8 images, computed on ``backbone``'s device, in float32.

    The model's train/eval mode is restored afterwards.
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        out = [backbone(images[i:i + batch_size].to(device).float().div(255)).flatten(1).float()
               for i in range(0, len(images), batch_size)]
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, c: float = 1.0, max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression with scikit-learn's objective (``C · Σ CE + ½‖W‖²``) on
    standardised ``x``, fitted by full-batch L-BFGS; returned as an ``nn.Linear`` on the **raw**
    features (standardisation folded into the weights), on ``x``'s device.

    Args:
        x: (n, d) features.
        y: (n,) class ids in ``0 .. num_classes - 1``.
        num_classes: number of classes.
        c: inverse regularisation strength (scikit-learn's ``C``).
        max_iter: L-BFGS iterations.
    """
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"`x` must be (n, d) with n >= 2 and `y` (n,), got {tuple(x.shape)} and {tuple(y.shape)}.")
    x, y = x.double(), y.to(x.device).long()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features: scikit-learn's StandardScaler keeps 1
    z = (x - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    n = len(x)

    def closure() -> Tensor:
        opt.zero_grad()
        # the objective divided by C·n (same minimiser), for well-scaled L-BFGS steps
        loss = nn.functional.cross_entropy(z @ weight.T + bias, y) + 0.5 * (weight ** 2).sum() / (c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        w = weight.detach() / std
        head.weight.copy_(w.float())
        head.bias.copy_((bias.detach() - (w * mean).sum(1)).float())
    return head


@torch.no_grad()
def accuracy_of(head: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``x`` that ``head`` classifies as ``y``."""
    return float((head(x).argmax(1) == y.to(x.device)).double().mean())


def linear_probe(backbone: nn.Module, images: Tensor, labels: Tensor, train_idx: Tensor, test_idx: Tensor,
                 num_classes: int) -> Tuple[float, nn.Linear]:
    """Test accuracy of a logistic-regression probe (``C = 1``) on ``backbone``'s frozen features,
    trained on ``images[train_idx]``, tested on ``images[test_idx]``; also the probe (on raw
    features, on the backbone's device), used to initialise fine-tuning heads."""
    x_train, x_test = features(backbone, images[train_idx]), features(backbone, images[test_idx])
    head = fit_logistic(x_train, labels[train_idx], num_classes)
    return accuracy_of(head, x_test, labels[test_idx]), head


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` (uint8 images in, logits out) in eval mode, on its own device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        correct = sum(int((model(images[i:i + batch_size].to(device).float().div(255)).argmax(1).cpu()
                           == labels[i:i + batch_size].cpu()).sum()) for i in range(0, len(images), batch_size))
    finally:
        model.train(was_training)
    return correct / len(images)
