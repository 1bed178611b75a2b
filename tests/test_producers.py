"""Fine-tuning trains weights on every encoder family: torchvision, timm, lightly, plain nn.Sequential.

Wang et al. (NeurIPS 2024) fine-tune the most memorizing layers; a measured layer may be a
parameter-free activation, so :mod:`lightning_memloc.taps.producers` maps it to the modules producing it.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import MemorizationReport
from lightning_memloc.callbacks.finetuning import MemorizationFinetuning
from lightning_memloc.taps.producers import count_parameters, producing_modules, trainable_map
from lightning_memloc.taps.hooks import resolve_layers



def _tv_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def _timm_resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")  # test-only dependency (dev extra)
    return timm.create_model("resnet18", num_classes=0, pretrained=False)


def _timm_vit() -> nn.Module:
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=0)


def _lightly_resnet() -> nn.Module:
    from lightly.models import ResNetGenerator

    resnet = ResNetGenerator("resnet-9", width=0.125)
    return nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _sequential() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU())


# Expected `layers="auto"` and the modules each layer trains, worked out from the architectures.
ENCODERS: Dict[str, Callable[[], nn.Module]] = {
    "torchvision-resnet18": _tv_resnet18, "timm-resnet18": _timm_resnet18, "timm-vit": _timm_vit,
    "lightly-resnet9": _lightly_resnet, "sequential": _sequential,
}
EXPECTED_FIRST = {  # first two auto layers -> modules
    "torchvision-resnet18": {"relu": ["conv1", "bn1"], "layer1.0": ["layer1.0"]},
    "timm-resnet18": {"act1": ["conv1", "bn1"], "layer1.0": ["layer1.0"]},
    "timm-vit": {"blocks.0.attn": ["blocks.0.attn"], "blocks.0.mlp.act": ["blocks.0.mlp.fc1"]},
    "lightly-resnet9": {"2.0": ["2.0"], "3.0": ["3.0"]},
    "sequential": {"2": ["0", "1"], "4": ["3"]},
}
NUM_LAYERS = {"torchvision-resnet18": 9, "timm-resnet18": 9, "timm-vit": 4, "lightly-resnet9": 4, "sequential": 3}


def _input(name: str) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16)


def _report(layers: List[str]) -> MemorizationReport:
    return MemorizationReport(
        layers=layers, layer_kinds=dict.fromkeys(layers, "conv"), candidate_ids=torch.arange(2),
        unit_mem={n: torch.zeros(2) for n in layers}, unit_argmax={n: torch.zeros(2, dtype=torch.long) for n in layers},
        dead_units={n: torch.zeros(2, dtype=torch.bool) for n in layers},
        layer_mem={n: float(i) for i, n in enumerate(layers)}, delta_layer_mem={n: 0.0 for n in layers})


class Lit(pl.LightningModule):
    def __init__(self, backbone: nn.Module, features: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(features, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(self.backbone(x).flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.rand(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 0, 1])), batch_size=4)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_auto_layers_map_to_parametrised_modules(name, one_thread):
    encoder = ENCODERS[name]()
    layers = [s.name for s in resolve_layers(encoder, "auto", _input(name))]
    assert len(layers) == NUM_LAYERS[name]
    mapping = trainable_map(encoder, layers)
    assert {k: mapping[k] for k in list(EXPECTED_FIRST[name])} == EXPECTED_FIRST[name]
    for layer, names in mapping.items():
        assert count_parameters(encoder, names) > 0, layer


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_chosen_layer_and_the_head_train(name, one_thread):
    torch.manual_seed(0)
    encoder = ENCODERS[name]()
    layers = [s.name for s in resolve_layers(encoder, "auto", _input(name))]
    features = encoder(_input(name)).flatten(1).shape[1]
    model = Lit(encoder, features)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finetuning = MemorizationFinetuning(_report(layers), k=len(layers), strategy="last", encoder="backbone", head="head")
    trainer = pl.Trainer(max_epochs=1, callbacks=[finetuning], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    assert finetuning.trainable_modules == trainable_map(encoder, layers)
    after = model.state_dict()
    for layer, names in finetuning.trainable_modules.items():
        changed = [f"backbone.{m}.{p}" for m in names for p, _ in encoder.get_submodule(m).named_parameters()
                   if not torch.equal(before[f"backbone.{m}.{p}"], after[f"backbone.{m}.{p}"])]
        assert changed, f"layer {layer} trained no parameter"
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_producing_modules_look_back_and_up():
    block = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Sequential(nn.GELU(), nn.Dropout()))
    assert producing_modules(block, "2.0") == ["0", "1"]  # nothing before it in "2": one level up
    assert producing_modules(block, "2") == ["0", "1"]
    assert producing_modules(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), "0") == []


def test_a_choice_training_nothing_fails_in_setup_before_any_step(one_thread):
    encoder = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = Lit(encoder, 4)
    steps = []
    model.on_train_batch_start = lambda *a: steps.append(1)
    finetuning = MemorizationFinetuning(_report(["0", "2"]), k=2, strategy="last", encoder="backbone", head="head")
    trainer = pl.Trainer(max_epochs=1, callbacks=[finetuning], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"layers \['0'\].*no module with parameters"):
        trainer.fit(model)
    assert steps == [] and trainer.global_step == 0


def test_mapping_is_recorded_and_restored():
    finetuning = MemorizationFinetuning(_report(["a"]), k=1)
    finetuning.chosen_layers, finetuning.trainable_modules = ["relu"], {"relu": ["conv1", "bn1"]}
    restored = MemorizationFinetuning(_report(["a"]), k=1)
    restored.load_state_dict(finetuning.state_dict())
    assert restored.trainable_modules == {"relu": ["conv1", "bn1"]} and restored.chosen_layers == ["relu"]
