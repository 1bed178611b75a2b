"""How many encoder parameters fine-tuning k measured layers trains, per encoder family.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) fine-tune the most
memorizing layers. For torchvision / timm / lightly encoders and a plain ``nn.Sequential`` this
measures UnitMem with ``layers="auto"``, picks the k = 3 layers with the highest mean UnitMem and
prints the parameters held by those modules themselves (what unfreezing the modules alone trains)
and by the modules :mod:`lightning_memloc.taps.producers` maps them to (what ``MemorizationFinetuning``
trains). Run from the repository root: ``python benchmarks/trainable_parameters.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from lightning_memloc import measure
from lightning_memloc.taps.producers import count_parameters, trainable_map
from lightning_memloc.report.selection import select_layers


def encoders() -> dict:
    import timm
    from lightly.models import ResNetGenerator
    from torchvision.models import resnet18

    def tv() -> nn.Module:
        model = resnet18(weights=None)
        model.fc = nn.Identity()
        return model

    return {
        "torchvision resnet18": tv,
        "timm resnet18": lambda: timm.create_model("resnet18", num_classes=0),
        "timm vit_tiny (32 px, patch 4)": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4,
                                                                   num_classes=0),
        "lightly resnet-18": lambda: nn.Sequential(*list(ResNetGenerator("resnet-18").children())[:-1],
                                                   nn.AdaptiveAvgPool2d(1)),
        "nn.Sequential": lambda: nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3),
                                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64),
                                               nn.ReLU()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train-10k.npz")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    with np.load(args.data) as f:
        images = torch.from_numpy(f[list(f.keys())[0]][: args.candidates]).permute(0, 3, 1, 2)
    for name, make in encoders().items():
        torch.manual_seed(0)
        encoder, start = make().eval(), time.perf_counter()
        report = measure(encoder, images, views=4, progress=False)
        chosen = select_layers(report, args.k, by="unit_mem", strategy="highest")
        mapping = trainable_map(encoder, chosen)
        alone = count_parameters(encoder, chosen)
        trained = count_parameters(encoder, [n for names in mapping.values() for n in names])
        print(f"{name}: {len(report.layers)} auto layers; chosen {chosen}; modules alone {alone:,} parameters, "
              f"trained {trained:,} via {mapping} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
