"""kNN accuracy (hand-computed, against a slow reference) and the ``UtilityMonitor`` callback."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_memloc import BatchedSimCLRAugment
from lightning_memloc.callbacks import MemorizationMonitor, UtilityMonitor
from lightning_memloc.callbacks.utility import embed
from lightning_memloc.functional.knn import knn_accuracy, knn_correct
from lightning_memloc.models import TinyCNN
from lightning_memloc.ssl import SimCLR

pytestmark = pytest.mark.usefixtures("one_thread")

# b0..b3 at cosine 1, 0.8, 0.6, 0 from the query [1, 0]; labels 0, 1, 1, 0.
BANK = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
BANK_LABELS = torch.tensor([0, 1, 1, 0])
QUERY, QUERY_LABEL = torch.tensor([[1.0, 0.0]]), torch.tensor([0])


def test_knn_hand_computed_temperature_weighting():
    # k=1: b0 alone -> class 0. k=3 at t=1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 + e^0.6 = 4.048
    # -> class 1 (wrong). At t=0.1: e^10 = 22026 against e^8 + e^6 = 3384 -> class 0 (a plain majority
    # vote would say class 1). k=4 at t=1: class 0 gets e^1 + e^0 = 3.718 < 4.048 -> still class 1.
    assert knn_accuracy(BANK, BANK_LABELS, QUERY, QUERY_LABEL, 2, ks=(1, 3, 4), temperature=1.0) == {1: 1.0, 3: 0.0, 4: 0.0}
    assert knn_accuracy(BANK, BANK_LABELS, QUERY, QUERY_LABEL, 2, ks=(1, 3), temperature=0.1) == {1: 1.0, 3: 1.0}
    # cosine: scaling bank rows or queries changes nothing
    scaled = BANK * torch.tensor([[5.0], [0.1], [2.0], [7.0]])
    assert knn_accuracy(scaled, BANK_LABELS, 3 * QUERY, QUERY_LABEL, 2, ks=(1, 3), temperature=1.0) == {1: 1.0, 3: 0.0}


def _slow_knn(bank, bank_labels, queries, num_classes, k, t):
    preds = []
    for q in queries:
        sims = [float(torch.dot(q / q.norm(), b / b.norm())) for b in bank]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        score = [0.0] * num_classes
        for i in order:
            score[int(bank_labels[i])] += math.exp(sims[i] / t)
        preds.append(max(range(num_classes), key=lambda c: score[c]))
    return torch.tensor(preds)


def test_knn_matches_slow_reference_and_chunks_sum():
    gen = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(40, 6, generator=gen), torch.randn(23, 6, generator=gen)
    bank_labels, labels = torch.randint(0, 4, (40,), generator=gen), torch.randint(0, 4, (23,), generator=gen)
    for k in (1, 5, 40):
        expected = int((_slow_knn(bank, bank_labels, queries, 4, k, 0.1) == labels).sum())
        assert knn_correct(bank, bank_labels, queries, labels, 4, ks=(k,), chunk=7) == {k: expected}
    # shards counted separately sum to the whole (what the DDP callback does)
    whole = knn_correct(bank, bank_labels, queries, labels, 4, ks=(5,))
    parts = [knn_correct(bank, bank_labels, queries[r::2], labels[r::2], 4, ks=(5,)) for r in (0, 1)]
    assert parts[0][5] + parts[1][5] == whole[5]


@pytest.mark.parametrize("kwargs, match", [
    (dict(ks=(5,)), "bank holds 4"), (dict(ks=(0,)), "`ks`"), (dict(ks=3), "`ks`"), (dict(ks=(2, 2)), "repeated"),
    (dict(temperature=0.0), "`temperature`"),
])
def test_knn_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_accuracy(BANK, BANK_LABELS, QUERY, QUERY_LABEL, 2, **kwargs)


# ---------------------------------------------------------------------------------------- callback
def _data():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 3, 16, 16), dtype=torch.uint8, generator=gen)
    return images, torch.arange(30) % 3


class TinySimCLR(pl.LightningModule):
    def __init__(self):
        super().__init__()
        simclr = SimCLR(TinyCNN(width=4), feature_dim=16, hidden_dim=16, out_dim=8, augment=BatchedSimCLRAugment(16))
        self.simclr, self.backbone = simclr, simclr.backbone

    def training_step(self, batch, batch_idx):
        return self.simclr.training_loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _model():
    torch.manual_seed(0)
    return TinySimCLR()


def _utility(images, labels, **kwargs):
    return UtilityMonitor(images[:20], labels[:20], images[20:], labels[20:], ks=(3, 10), encoder="backbone", **kwargs)


def _trainer(tmp_path, callbacks, max_epochs=2, **kwargs):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, logger=CSVLogger(tmp_path, name="csv", version=0), **kwargs)


class ModeSpy(pl.Callback):
    """Records the backbone's mode and a frozen layer's requires_grad after every other callback."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        bb = pl_module.backbone
        self.seen.append((bb.training, bb.conv1.training, bb.conv2.training, bb.conv1.conv.weight.requires_grad))


def test_callback_logs_knn_accuracy_of_the_encoder(tmp_path):
    images, labels = _data()
    pl.seed_everything(0)
    model = _model()
    model.backbone.conv1.requires_grad_(False)
    utility, spy = _utility(images, labels, output_dir=tmp_path / "out", measure_on_train_start=True), ModeSpy()
    trainer = _trainer(tmp_path, [utility, spy], enable_checkpointing=False)
    trainer.fit(model, DataLoader(TensorDataset(images), batch_size=10))
    assert [(h["epoch"], h["global_step"]) for h in utility.history] == [(-1, 0), (0, 3), (1, 6)]
    # training mode and requires_grad as training left them
    assert spy.seen == [(True, True, True, False)] * 2
    # the last value is the kNN accuracy of the final encoder's (eval-mode, pooled) features
    model.eval()
    feats = embed(model.backbone, images, batch_size=7)
    expected = knn_accuracy(feats[:20], labels[:20], feats[20:], labels[20:], 3, ks=(3, 10))
    assert utility.history[-1]["memloc/knn_acc_k3"] == pytest.approx(expected[3])
    assert utility.history[-1]["memloc/knn_acc_k10"] == pytest.approx(expected[10])
    assert trainer.callback_metrics["memloc/knn_acc_k10"].item() == pytest.approx(expected[10])
    # logged at the global step, like the memorization scalars
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [r.split(",")[header.index("step")] for r in rows[1:] if r.split(",")[header.index("memloc/knn_acc_k3")]]
    assert steps == ["0", "3", "6"]
    assert json.loads((tmp_path / "out" / "utility_history.json").read_text()) == utility.history


def test_callback_joins_the_memorization_monitor_history_and_resumes(tmp_path):
    images, labels = _data()
    pl.seed_everything(0)
    monitor = MemorizationMonitor(images[:6], views=2, encoder="backbone", grid_size=0, progress=False, bootstrap=0)
    utility = _utility(images, labels)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, [monitor, utility, ckpt])
    trainer.fit(_model(), DataLoader(TensorDataset(images), batch_size=10))
    for entry, ours in zip(monitor.history, utility.history):
        assert entry["global_step"] == ours["global_step"]
        assert entry["memloc/knn_acc_k3"] == ours["memloc/knn_acc_k3"] and "memloc.unit_mem_mean/conv1" in entry
    # resume: the history comes back from the checkpoint and grows by the new epoch only
    again = _utility(images, labels)
    trainer = _trainer(tmp_path, [again], max_epochs=3, enable_checkpointing=False)
    trainer.fit(_model(), DataLoader(TensorDataset(images), batch_size=10), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert again.history[:2] == utility.history and [h["global_step"] for h in again.history] == [3, 6, 9]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ks=(25,)), ValueError, "bank` holds 20"),
    (dict(num_classes=2), ValueError, "num_classes"),
    (dict(every_n_epochs=1, every_n_train_steps=2), ValueError, "not both"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(transform=3), TypeError, "transform"),
])
def test_callback_bad_arguments(kwargs, error, match):
    images, labels = _data()
    args = dict(ks=(3,), encoder="backbone")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        UtilityMonitor(images[:20], labels[:20], images[20:], labels[20:], **args)


def test_callback_bad_data():
    images, labels = _data()
    with pytest.raises(ValueError, match="bank_labels"):
        UtilityMonitor(images[:20], labels[:19], images[20:], labels[20:], ks=(3,))
    with pytest.raises(TypeError, match="`test`"):
        UtilityMonitor(images[:20], labels[:20], images[20:].long(), labels[20:], ks=(3,))
    with pytest.raises(ValueError, match="same"):
        UtilityMonitor(images[:20], labels[:20], images[20:, :, :8], labels[20:], ks=(3,))


# ------------------------------------------------------------------------------------------ demo
def test_demo_utility_uses_labelled_shared_and_independent_images():
    from lightning_memloc.data import SplitIndices
    from lightning_memloc.demo_utility import demo_utility, knn_table

    images, labels = _data()
    labels = labels.clone()
    labels[[0, 25]] = -1  # canaries carry no label
    split = SplitIndices(torch.arange(0, 22), torch.arange(22, 25), torch.arange(25, 30))
    utility, what = demo_utility(images, labels, split, every_n_epochs=2)
    assert utility.ks == (20,)  # 21 labelled shared images: k=200 does not fit
    assert torch.equal(utility.bank, images[1:22]) and torch.equal(utility.test, images[26:30])
    assert utility.every_n_epochs == 2 and utility.measure_on_train_start and utility.encoder_spec == "encoder.backbone"
    assert "unseen by f" in what
    # canaries setting: no labelled independent image -> every other labelled shared image is tested
    halves, what = demo_utility(images, labels, SplitIndices(torch.arange(0, 22), torch.arange(22, 25),
                                                             torch.tensor([25])), every_n_epochs=1)
    assert torch.equal(halves.bank, images[1:22:2]) and torch.equal(halves.test, images[2:22:2]) and "half" in what
    assert halves.ks == (11,)
    assert demo_utility(images, labels, SplitIndices(torch.tensor([0, 1]), torch.arange(22, 25), torch.tensor([25])),
                        1)[0] is None  # one labelled image: no bank and test
    small, _ = demo_utility(images, labels, SplitIndices(torch.arange(0, 6), torch.arange(22, 25), torch.arange(25, 30)), 1)
    assert small.ks == (5,)  # no k fits: the whole bank
    table = knn_table([{"epoch": -1, "memloc/knn_acc_k20": 0.125}, {"epoch": 3}], (20,))
    assert table.splitlines() == [" epoch      k=20", "  init     12.5%", "     3       n/a"]


@pytest.mark.slow
def test_demo_prints_knn_accuracy_over_training(tmp_path, capsys):
    from lightning_memloc.cli import main

    argv = ["demo", "--setting", "plain", "--data", "digits", "--limit", "80", "--width", "2", "--epochs", "1",
            "--views", "2", "--bootstrap", "200", "--every-n-epochs", "1", "--out", str(tmp_path), "--accelerator", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("[memloc] kNN accuracy of f (bank: shared images; test: independent images"):].splitlines()
    assert table[1].split() == ["epoch", "k=20"] and table[2].split()[0] == "init" and table[3].split()[0] == "0"
    knn = json.loads((tmp_path / "summary.json").read_text())["knn_accuracy"]
    assert [h["epoch"] for h in knn] == [-1, 0] and table[3].split()[1] == f"{knn[1]['memloc/knn_acc_k20']:.1%}"


def test_lightning_pytorch_binding_runs_in_its_trainer(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lightning_memloc import lightning as bound
    from lightning_memloc.callbacks import utility as plain

    assert issubclass(bound.UtilityMonitor, L.Callback) and issubclass(bound.UtilityMonitor, plain.UtilityMonitor)

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = TinyCNN(width=2)

        def training_step(self, batch, batch_idx):
            return self.backbone(batch[0].float() / 255).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    images, labels = _data()
    utility = bound.UtilityMonitor(images[:20], labels[:20], images[20:], labels[20:], ks=(3,), encoder="backbone")
    trainer = L.Trainer(max_epochs=1, callbacks=[utility], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    torch.manual_seed(0)
    model = Lit()
    trainer.fit(model, DataLoader(TensorDataset(images), batch_size=10))
    model.eval()
    feats = embed(model.backbone, images, batch_size=30)
    assert utility.history[-1]["memloc/knn_acc_k3"] == knn_accuracy(feats[:20], labels[:20], feats[20:], labels[20:],
                                                                      3, ks=(3,))[3]


def test_tensorboard_chart_puts_knn_accuracy_beside_memorization(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    images, labels = _data()
    monitor = MemorizationMonitor(images[:6], views=2, encoder="backbone", grid_size=0, progress=False, bootstrap=0)
    utility = _utility(images, labels)
    trainer = pl.Trainer(max_epochs=1, callbacks=[utility, monitor], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, logger=TensorBoardLogger(tmp_path, name="tb", version=0))
    trainer.fit(_model(), DataLoader(TensorDataset(images), batch_size=10))
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("memloc/knn_acc_k3")] == [e.step for e in acc.Scalars("memloc.unit_mem_mean/conv1")]
    layout = layout_pb2.Layout.FromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    categories = {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}
    assert "memloc" in categories  # the monitor's charts, written after ours, are merged with them
    assert categories["memloc utility"]["kNN accuracy and mean UnitMem"] == [
        "^memloc/knn_acc_k3$", "^memloc/knn_acc_k10$", r"^memloc\.unit_mem_mean/[^/]+$"]
