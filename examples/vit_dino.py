"""DINO-train a tiny ViT and its reference on digits, then localize memorization: attention vs MLP.

Wang et al., *Localizing Memorization in SSL Vision Encoders* (NeurIPS 2024) find that in ViTs
memorization concentrates in the fully-connected (MLP) layers rather than in self-attention.
This example reproduces the set-up at toy scale, on CPU, in well under two minutes:

1. split scikit-learn's digits (bundled, offline) into shared / candidates / independent;
2. train the encoder ``f`` on shared ∪ candidates and the reference ``g`` on shared ∪ independent
   with DINO (Caron et al., ICCV 2021: lightly's ``DINOProjectionHead`` and ``DINOLoss``, an EMA
   teacher updated with ``lightly.models.utils.update_momentum``), same initialisation and
   hyper-parameters;
3. ``measure(f, candidates, reference=g)`` with ``layers="auto"``, which taps every block's
   ``self_attention`` ("attention") and MLP GELU ("mlp");
4. print the per-layer table and :func:`lightning_memloc.taps.vit.group_by_kind`, and the same
   grouping for a control set of images neither encoder saw (its LayerMem is the part of the
   f-vs-g gap that is not memorization).

Run: ``python examples/vit_dino.py --epochs 2`` (defaults are CPU-sized). With so few epochs the
numbers are noisy; raise ``--epochs`` for a clearer attention/MLP gap.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Dict

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from lightning_memloc import BatchedSimCLRAugment, measure
from lightning_memloc.data import load_digits, split_candidates
from lightning_memloc.models.small import TinyViT
from lightning_memloc.taps.vit import group_by_kind


class DINO(nn.Module):
    """Student (backbone + DINO head) and its momentum teacher."""

    def __init__(self, backbone: nn.Module, dim: int, out_dim: int) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(dim, 4 * dim, dim, out_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(dim, 4 * dim, dim, out_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def student(self, x: Tensor) -> Tensor:
        return self.student_head(self.student_backbone(x))

    @torch.no_grad()
    def teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    def update_teacher(self, momentum: float) -> None:
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)


def train_dino(images: Tensor, args: argparse.Namespace, name: str) -> nn.Module:
    """DINO-train a :class:`TinyViT` on uint8 ``images`` (N, 3, S, S); return the student backbone."""
    torch.manual_seed(args.seed)  # f and g start from the same weights
    model = DINO(TinyViT(image_size=args.image_size, dim=args.dim, depth=args.depth, mlp_dim=2 * args.dim),
                 args.dim, args.out_dim)
    criterion = DINOLoss(output_dim=args.out_dim, warmup_teacher_temp_epochs=max(1, args.epochs // 2))
    augment = BatchedSimCLRAugment(args.image_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.04)
    data = images.float().div(255.0)
    steps_per_epoch = len(data) // args.batch_size
    total, step = args.epochs * steps_per_epoch, 0
    generator = torch.Generator().manual_seed(args.seed + 1)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(data), generator=generator)
        running = 0.0
        for b in range(steps_per_epoch):
            batch = data[perm[b * args.batch_size:(b + 1) * args.batch_size]]
            seeds = torch.randint(0, 2**62, (2, len(batch)), generator=generator)
            views = [augment(batch, seeds[0]), augment(batch, seeds[1])]
            momentum = cosine_schedule(step, total, 0.99, 1.0)
            model.update_teacher(momentum)
            teacher_out = [model.teacher(v) for v in views]
            student_out = [model.student(v) for v in views]
            loss = criterion(teacher_out, student_out, epoch=epoch)
            optimizer.zero_grad()
            loss.backward()
            model.student_head.cancel_last_layer_gradients(current_epoch=epoch)
            optimizer.step()
            running += float(loss.detach())
            step += 1
        print(f"[{name}] epoch {epoch + 1}/{args.epochs}  DINO loss {running / max(1, steps_per_epoch):.4f}")
    return model.student_backbone.eval()


def print_groups(groups: Dict[str, Dict[str, float]]) -> None:
    """One row per layer kind: mean UnitMem, share of units above 0.5, dead units, LayerMem, ΔLayerMem."""
    print(f"{'kind':<11}{'layers':>7}{'UnitMem':>9}{'>0.5':>7}{'dead':>7}{'LayerMem':>10}{'ΔLayerMem':>11}")
    for kind, s in groups.items():
        print(f"{kind:<11}{int(s['num_layers']):>7}{s['unit_mem']:>9.3f}{s['fraction_above']:>7.1%}"
              f"{s['dead_fraction']:>7.1%}{s.get('layer_mem', float('nan')):>10.3f}{s.get('delta_layer_mem', float('nan')):>+11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--out-dim", type=int, default=256)
    parser.add_argument("--views", type=int, default=8, help="augmented views per candidate for measure()")
    parser.add_argument("--negative", default="clamp", choices=["clamp", "shift", "error"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated", category=FutureWarning)  # lightly's DINO head
    start = time.time()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    images, labels = load_digits(size=args.image_size)
    split = split_candidates(len(images), shared=0.7, candidates=0.1, independent=0.1, seed=args.seed)
    used = torch.zeros(len(images), dtype=torch.bool)
    used[torch.cat([split.shared, split.candidates, split.independent])] = True
    unseen = (~used).nonzero().flatten()  # seen by neither f nor g: the control group
    print(f"digits: {len(images)} images; shared {len(split.shared)}, candidates {len(split.candidates)}, "
          f"independent {len(split.independent)}, unseen {len(unseen)}")
    encoder = train_dino(images[split.encoder], args, "f: shared+candidates")
    reference = train_dino(images[split.reference], args, "g: shared+independent")

    report = measure(encoder, images[split.candidates], reference=reference, views=args.views, seed=args.seed,
                     labels=labels[split.candidates], negative=args.negative, top_k=10)
    mean_um, dead = report.unit_mem_mean(), report.num_dead_units()
    print(f"\n{'layer':<48}{'kind':<11}{'LayerMem':>9}{'ΔLayerMem':>11}{'UnitMem':>9}{'dead':>6}")
    for layer in report.layers:
        print(f"{layer:<48}{report.layer_kinds[layer]:<11}{report.layer_mem[layer]:>9.3f}"
              f"{report.delta_layer_mem[layer]:>+11.3f}{mean_um[layer]:>9.3f}{dead[layer]:>6d}")
    print("\nGrouped by kind (Wang et al., NeurIPS 2024: ViT memorization concentrates in the MLPs):")
    print_groups(group_by_kind(report))
    # Control: images neither encoder saw. Their LayerMem is the f-vs-g gap that is *not* memorization
    # (different runs drift apart); the candidates' excess over it is the memorization signal.
    control = measure(encoder, images[unseen], reference=reference, views=args.views, seed=args.seed,
                      negative=args.negative, top_k=10)
    print("\nControl (unseen images, neither encoder trained on them):")
    print_groups(group_by_kind(control))
    print(f"\nnegative={args.negative!r}; total {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
