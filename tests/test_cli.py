"""The ``memloc`` command, run in-process on tiny checkpoints and a tiny .npz data file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_memloc
from lightning_memloc import MemorizationReport, load_encoder, measure
from lightning_memloc.callbacks.logging import report_scalars
from lightning_memloc.cli import ARCHS, build_model
from lightning_memloc.data import load_npz, split_candidates
from lightning_memloc.models import TinyCNN
from helpers import assert_png, run_cli as run

REPO = Path(__file__).resolve().parents[1]
N = 12


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Checkpoints f.pt, g.pt (same architecture), g8.pt (width 8), pair.ckpt (Lightning-style) and d.npz."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    f, g = TinyCNN(3, 4), TinyCNN(3, 4)
    torch.save(f.state_dict(), root / "f.pt")
    torch.save(g.state_dict(), root / "g.pt")
    torch.save(TinyCNN(3, 8).state_dict(), root / "g8.pt")
    pair = {**{f"encoder.backbone.{k}": v for k, v in f.state_dict().items()},
            **{f"reference.backbone.{k}": v for k, v in g.state_dict().items()}}
    torch.save({"state_dict": pair, "epoch": 3}, root / "pair.ckpt")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8), y=np.arange(N) % 3)
    np.savez(root / "nolabels.npz", x=rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8))
    return root


ANALYZE = ["analyze", "--arch", "tiny", "--size", "16", "--views", "3", "--top-k", "3", "--no-progress"]


@pytest.fixture(scope="module")
def analyzed(ws) -> tuple:
    """One full run with a reference and labels: (out dir, exit code, stdout, stderr)."""
    out = ws / "out"
    code, stdout, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz",
                                          "--labels", "--output-dir", out])
    return out, code, stdout, stderr


def test_analyze_report_equals_measure(ws, analyzed):
    out, code, stdout, stderr = analyzed
    assert code == 0, stderr
    report = MemorizationReport.load(out / "report.json")
    like = TinyCNN(3, 4)
    images, labels = load_npz(ws / "d.npz")
    direct = measure(load_encoder(ws / "f.pt", like), images, reference=load_encoder(ws / "g.pt", like), views=3,
                     layers="auto", seed=0, batch_size=32, labels=labels, top_k=3, candidate_ids=torch.arange(N))
    assert report.allclose(direct)
    assert report.has_reference and report.class_mem is not None and report.layers == ["conv1", "conv2", "conv3"]
    assert report.meta["arch"] == "tiny" and report.meta["width"] == 4 and report.meta["data"].endswith("d.npz")
    assert direct.summary_table() in stdout and "report.json" in stdout


def test_analyze_writes_readable_figures(analyzed):
    out = analyzed[0]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["candidates.png", "evidence.png", "layer_mem.png", "sslmem_vs_unitmem.png", "unit_mem.png"]
    for name in names:
        assert_png(out / name)


def test_analyze_without_reference_on_the_demo_split(ws):
    out = ws / "split"
    code, _, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--indices-from-split",
                                     "--split-candidates", "0.3", "--split-independent", "0.2", "--seed", "1",
                                     "--layers", "conv1, conv3", "--output-dir", out])
    assert code == 0, stderr
    report = MemorizationReport.load(out / "report.json")
    expected = split_candidates(N, shared=N - 3 - 2, candidates=0.3, independent=0.2, seed=1).candidates
    assert torch.equal(report.candidate_ids, expected)  # dataset indices, the same split as `memloc demo`
    assert report.layers == ["conv1", "conv3"] and not report.has_reference and report.class_mem is None
    assert sorted(p.name for p in out.glob("*.png")) == ["candidates.png", "evidence.png", "unit_mem.png"]


def test_analyze_with_control_and_unseen_from_the_split(ws):
    out = ws / "groups"
    args = ["--encoder", ws / "f.pt", "--reference", ws / "g.pt", "--data", ws / "d.npz", "--indices-from-split",
            "--split-candidates", "3", "--split-independent", "3", "--control", "3", "--unseen", "split",
            "--bootstrap", "200", "--output-dir", out]
    code, stdout, stderr = run(ANALYZE + args)
    assert code == 0, stderr
    report = MemorizationReport.load(out / "report.json")
    split = split_candidates(N, shared=N - 6, candidates=3, independent=3, seed=0)
    control = split.control(3, seed=0)
    assert report.meta["control_indices"] == control.tolist()
    assert report.meta["unseen_indices"] == split.independent.tolist()
    like = TinyCNN(3, 4)
    images, _ = load_npz(ws / "d.npz")
    images = torch.nn.functional.interpolate(images.float(), size=16).round().to(torch.uint8) if images.shape[-1] != 16 else images
    direct = measure(load_encoder(ws / "f.pt", like), images[split.candidates], reference=load_encoder(ws / "g.pt", like),
                     views=3, top_k=3, candidate_ids=split.candidates, control=images[control],
                     unseen=images[split.independent], bootstrap=200)
    assert report.allclose(direct)
    for layer in report.layers:
        for key, value in direct.evidence.layers[layer].items():
            got = report.evidence.layers[layer][key]
            assert (value is None and got is None) or got == pytest.approx(value, abs=1e-5), (layer, key)
    assert "candidates > control at" in stdout and "membership" not in stderr
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--indices-from-split",
                                  "--split-candidates", "3", "--control", "3", "--output-dir", ws / "never2"])
    assert code == 2 and "--control" in err and "--reference" in err
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--unseen", "split",
                                  "--output-dir", ws / "never3"])
    assert code == 2 and "--unseen" in err and "--indices-from-split" in err
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--bootstrap", "-1",
                                  "--output-dir", ws / "never4"])
    assert code == 2 and "--bootstrap" in err


def test_analyze_refuses_to_replace_an_earlier_report(ws, analyzed):
    out = ws / "again"
    out.mkdir()
    (out / "report.json").write_bytes((analyzed[0] / "report.json").read_bytes())
    before = (out / "report.json").read_bytes()
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--output-dir", out])
    assert code == 2 and "--output-dir" in err and "--overwrite" in err
    assert (out / "report.json").read_bytes() == before  # untouched
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--output-dir", out, "--overwrite"])
    assert code == 0, err
    assert (out / "report.json").read_bytes() != before


def test_analyze_lightning_checkpoint_with_prefixes(ws):
    ckpt = ws / "pair.ckpt"
    base = ANALYZE + ["--data", ws / "d.npz", "--candidates", "4", "--views", "2"]
    code, _, err = run(base + ["--encoder", ckpt, "--reference", ckpt, "--output-dir", ws / "never"])
    assert code == 2 and "--encoder: the checkpoint" in err and "['encoder.backbone', 'reference.backbone']" in err
    assert "--encoder-prefix encoder.backbone" in err  # several fitting prefixes: the user names one (row 80)
    code, _, err = run(base + ["--encoder", ckpt, "--encoder-prefix", "encoder.backbone", "--reference", ckpt,
                               "--reference-prefix", "encoder.backbone", "--output-dir", ws / "never"])
    assert code == 2 and "--reference: its weights are identical" in err and "--reference-prefix" in err
    assert not (ws / "never").exists()
    code, _, err = run(base + ["--encoder", ckpt, "--encoder-prefix", "encoder.backbone", "--reference", ckpt,
                               "--reference-prefix", "reference.backbone", "--output-dir", ws / "pair"])
    assert code == 0, err
    report = MemorizationReport.load(ws / "pair" / "report.json")
    assert report.has_reference and report.num_candidates == 4


@pytest.mark.parametrize(
    "change, flag, phrase",
    [
        ({"--encoder": "missing.pt"}, "--encoder", "no checkpoint file at"),
        ({"--reference": "g8.pt"}, "--reference", "must have the encoder's architecture"),
        ({"--layers": "conv1,conv_3"}, "--layers", "Did you mean 'conv3'"),
        ({"--width": "8"}, "--encoder", "(4, 3, 3, 3) in the checkpoint but (8, 3, 3, 3) in the model"),
        ({"--data": "missing.npz"}, "--data", "check the path"),
        ({"--data": "nolabels.npz"}, "--labels", "drop --labels"),
        ({"--output-dir": "f.pt/sub"}, "--output-dir", "is a file, not a folder"),
        ({"--indices": "missing.json"}, "--indices", "no indices file"),
        ({"--candidates": "1"}, "--candidates", "at least 2"),
        ({"--views": "1"}, "--views", "--pairing anchor"),
        ({"--in-channels": "2", "--encoder": None, "--reference": None}, "--in-channels", "--in-channels 3"),
    ],
)
def test_analyze_errors_are_one_line_exit_2(ws, change, flag, phrase, monkeypatch):
    monkeypatch.chdir(ws)
    args = {"--encoder": "f.pt", "--reference": "g.pt", "--data": "d.npz", "--output-dir": "err_out", "--labels": True}
    if "--in-channels" in change:  # an encoder that takes 2 channels, so that the data check is reached
        torch.save(TinyCNN(2, 4).state_dict(), "f2.pt")
        args["--encoder"] = "f2.pt"
    args.update({k: v for k, v in change.items() if k not in ("--encoder", "--reference") or v is not None})
    if change.get("--reference", "") is None:
        del args["--reference"]
    argv = ANALYZE + [x for k, v in args.items() for x in ([k] if v is True else [k, v])]
    code, stdout, stderr = run(argv)
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith(f"memloc analyze: error: {flag}: ") and phrase in stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (ws / "err_out").exists()  # validated before any work


def test_device_cuda_without_cuda(ws):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv = ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--device", "cuda", "--output-dir", ws / "x"]
    code, _, err = run(argv)
    assert code == 2 and "--device" in err and "--device cpu" in err


def test_usage_errors_and_help():
    assert run(["analyze", "--arch", "tiny"])[0] == 2  # argparse: missing required options
    code, out, _ = run(["--help"])
    assert code == 0 and "analyze" in out and "plot" in out and "demo" in out
    code, out, _ = run(["analyze", "--help"])
    assert code == 0 and "--indices-from-split" in out


def test_plot_from_report_and_images(ws, analyzed):
    out = ws / "replot"
    code, stdout, err = run(["plot", analyzed[0] / "report.json", "--images", ws / "d.npz", "--k", "3", "--output-dir", out])
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == ["candidates.png", "evidence.png", "layer_mem.png",
                                                        "sslmem_vs_unitmem.png", "unit_mem.png"]
    for png in out.glob("*.png"):
        assert_png(png)
    assert "LayerMem" in stdout


def test_plot_monitor_folder_with_history(ws, analyzed):
    report = MemorizationReport.load(analyzed[0] / "report.json")
    folder = ws / "monitor" / "memloc"
    folder.mkdir(parents=True)
    for epoch in (0, 10, 2):
        report.save(folder / f"report_epoch={epoch}.json")
    history = [{"epoch": e, "global_step": 4 * e, **report_scalars(report)} for e in (-1, 0, 1)]
    (folder / "history.json").write_text(json.dumps(history))
    code, _, err = run(["plot", ws / "monitor", "--output-dir", ws / "monitor_plots"])
    assert code == 0, err
    assert (ws / "monitor_plots" / "history.png").is_file() and (ws / "monitor_plots" / "layer_mem.png").is_file()
    code, _, err = run(["plot", folder / "history.json", "--output-dir", ws / "hist_only"])
    assert code == 0, err
    assert sorted(p.name for p in (ws / "hist_only").glob("*.png")) == ["evidence_history.png", "history.png"]
    assert_png(ws / "hist_only" / "history.png")


def test_plot_errors(ws, analyzed):
    corrupt = ws / "corrupt.json"
    corrupt.write_text(Path(analyzed[0] / "report.json").read_text()[:50])
    code, _, err = run(["plot", corrupt, "--output-dir", ws / "p"])
    assert code == 2 and "corrupt" in err and str(corrupt) in err and err.count("\n") == 1
    other = ws / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    code, _, err = run(["plot", other, "--output-dir", ws / "p"])
    assert code == 2 and "not a MemorizationReport" in err
    code, _, err = run(["plot", ws / "nothing.json"])
    assert code == 2 and "check the path" in err and "REPORT_OR_HISTORY" in err
    report = analyzed[0] / "report.json"
    code, _, err = run(["plot", report, "--images", ws / "d.npz", "--candidates", "5", "--output-dir", ws / "p"])
    assert code == 2 and "--images" in err and "5 images for 12 candidates" in err
    code, _, err = run(["plot", report, "--layer", "conv9", "--output-dir", ws / "p"])
    assert code == 2 and "--layer" in err and "conv3" in err
    assert not (ws / "p").exists()


def test_demo_forwards_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("lightning_memloc.demo")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "lightning_memloc.demo", fake)
    monkeypatch.setattr(lightning_memloc, "demo", fake, raising=False)
    assert run(["demo", "--epochs", "1", "--data", "x.npz"])[0] == 0
    assert seen == [["--epochs", "1", "--data", "x.npz"]]


def test_demo_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning_memloc.demo", None)
    monkeypatch.delattr(lightning_memloc, "demo", raising=False)
    code, _, err = run(["demo"])
    assert code == 2 and "lightning_memloc.demo" in err


def test_demo_help_returns_zero():
    pytest.importorskip("lightning_memloc.demo")
    code, out, _ = run(["demo", "--help"])
    assert code == 0 and "memloc demo" in out


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model(arch):
    model = build_model(arch, None, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape[0] == 2
    if arch.startswith("resnet18"):
        with pytest.raises(ValueError, match="width 64"):
            build_model(arch, 32)


@pytest.mark.slow
def test_python_m_help_in_a_subprocess():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "lightning_memloc.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: memloc" in proc.stdout and "analyze" in proc.stdout


def test_unused_checkpoint_tensors_warn(ws):
    from lightning_memloc.models import ResNet9

    torch.save(ResNet9(width=4).state_dict(), ws / "r9.pt")  # its first layers fit TinyCNN(width=4) exactly
    argv = ANALYZE + ["--encoder", ws / "r9.pt", "--data", ws / "d.npz", "--layers", "nope", "--output-dir", ws / "w"]
    code, _, err = run(argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("memloc analyze: warning: --encoder: 30 tensors") and "check --arch" in lines[0]
    assert "not used by TinyCNN" in lines[0]
    assert lines[1].startswith("memloc analyze: error: --layers:")


def test_failed_measurement_exits_1(ws):
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in TinyCNN(3, 4).state_dict().items()}
    torch.save(state, ws / "nan.pt")
    argv = ANALYZE + ["--encoder", ws / "nan.pt", "--data", ws / "d.npz", "--views", "2", "--output-dir", ws / "nan"]
    code, _, err = run(argv)
    assert code == 1 and "measurement failed" in err and "NaN" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["json", "dict.json", "txt", "npy"])
def test_indices_file_formats(ws, fmt):
    from lightning_memloc.cli import build_parser
    from lightning_memloc.cli.selection import select_candidates as _select

    path = ws / f"idx.{fmt}"
    if fmt == "npy":
        np.save(path, np.array([5, 1, 7]))
    elif fmt == "txt":
        path.write_text("5, 1\n7\n")
    else:
        path.write_text(json.dumps({"candidates": [5, 1, 7]} if fmt.startswith("dict") else [5, 1, 7]))
    args = build_parser().parse_args(["plot", "r.json", "--images", "digits", "--indices", str(path)])
    assert _select(args, N, 0).tolist() == [5, 1, 7]
    argv = ["plot", "r.json", "--images", "digits", "--indices", str(path)]
    args = build_parser().parse_args(argv + ["--candidates", "2"])
    assert _select(args, N, 0).tolist() == [5, 1]
    code, _, err = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--indices", path, "--limit", "6",
                                  "--output-dir", ws / "i"])
    assert code == 2 and "--indices: index 7 is outside the 6 images" in err


def test_renamed_flags_keep_their_old_spellings_with_a_warning(ws):
    import contextlib
    import io

    from lightning_memloc.demo import build_parser as demo_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = demo_parser().parse_args(["--limit", "7", "--candidates", "0.2", "--independent", "3", "--workers", "1",
                                         "--out", "runs/x"])
    assert (args.subset, args.split_candidates, args.split_independent, args.num_workers, args.output_dir) == \
        (7, 0.2, 3, 1, "runs/x")
    lines = err.getvalue().splitlines()
    assert len(lines) == 5 and all(line.startswith("memloc demo: warning: ") for line in lines)
    assert "--limit is deprecated: use --subset" in lines[0] and "`memloc analyze --limit` keeps the first N" in lines[0]
    assert "--candidates is deprecated: use --split-candidates" in lines[1]
    # analyze / plot: --out still works, one warning line, and the report is written
    code, _, stderr = run(ANALYZE + ["--encoder", ws / "f.pt", "--data", ws / "d.npz", "--candidates", "4",
                                     "--out", ws / "old_out"])
    assert code == 0 and (ws / "old_out" / "report.json").is_file()
    assert stderr == "memloc analyze: warning: --out is deprecated: use --output-dir (the old spelling works for one release).\n"
    code, _, stderr = run(["plot", ws / "old_out" / "report.json", "--out", ws / "old_out"])
    assert code == 0 and "--out is deprecated" in stderr
