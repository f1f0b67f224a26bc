"""mae.features: k-NN against a brute-force reference, the cached probe, raw-pixel / random-encoder paths, CLI."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae import features as F
from mae.config import load_config
from mae.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"


def _brute_knn(train_x, train_y, test_x, num_classes, k, t):
    preds = []
    for q in test_x:
        sims = [float(torch.dot(q / q.norm(), x / x.norm())) for x in train_x]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_y[i])] += torch.exp(torch.tensor(sims[i] / t)).item()
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_knn_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    test_y = torch.randint(0, 4, (25,), generator=g)
    for k, t in ((20, 0.07), (3, 1.0), (1, 0.07)):
        ref = _brute_knn(train_x, train_y, test_x, 4, k, t)
        expected = 100.0 * float((ref == test_y).float().mean())
        got = F.knn_classify(train_x, train_y, test_x, test_y, 4, k=k, temperature=t, chunk=7)  # several chunks
        assert got["top1"] == pytest.approx(expected)
    # the test queries themselves in the train set with k=1: every one finds itself
    assert F.knn_classify(test_x, test_y, test_x, test_y, 4, k=1)["top1"] == 100.0


def test_cached_probe_converges_on_separable_features():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 16, generator=g) * 3
    y = torch.randint(0, 5, (2000,), generator=g)
    x = centers[y] + torch.randn(2000, 16, generator=g)
    result = F.train_cached_probe(x[:1500], y[:1500], x[1500:], y[1500:], 5, lr=1.0, batch_size=64,
                                  warmup_epochs=1, max_epochs=200, seed=0)
    assert result.converged and result.epochs < 200
    assert result.top1 >= 97.0
    again = F.train_cached_probe(x[:1500], y[:1500], x[1500:], y[1500:], 5, lr=1.0, batch_size=64,
                                 warmup_epochs=1, max_epochs=200, seed=0)
    assert again.top1 == result.top1 and again.final_loss == result.final_loss
    # the paper's head: BN without affine + linear, only the linear layer trains
    assert not result.head[0].affine and isinstance(result.head[1], torch.nn.Linear)


def test_cached_probe_returns_to_its_best_state_when_a_too_high_lr_makes_the_loss_rise():
    """A probe whose loss rises at a too-high lr must not end at that higher loss and call it converged:
    each plateau returns to the best epoch's head (seen in the tiny grid: LARS lr 16, loss 2.2 vs best 0.96)."""
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 16, generator=g)
    y = torch.randint(0, 5, (3000,), generator=g)
    x = centers[y] + torch.randn(3000, 16, generator=g)
    result = F.train_cached_probe(x[:2500], y[:2500], x[2500:], y[2500:], 5, lr=64.0, batch_size=64,
                                  warmup_epochs=0.2, max_epochs=100, seed=0)
    losses = [r["loss"] for r in result.records]
    assert max(losses[2:6]) > 10 * min(losses[:2])  # the lr is too high: the loss climbs after epoch 1
    assert result.converged
    assert min(losses) <= result.final_loss <= min(losses) * (1 + F.PROBE_TOL)  # the best state is returned
    head = result.head.eval()
    with torch.no_grad():
        train_loss = float(torch.nn.functional.cross_entropy(head(x[:2500]), y[:2500]))
    assert train_loss < 2 * min(losses)  # the returned head is that state, not the last epoch's
    sane = F.train_cached_probe(x[:2500], y[:2500], x[2500:], y[2500:], 5, lr=1.0, batch_size=64,
                                warmup_epochs=0.2, max_epochs=100, seed=0)
    assert result.top1 >= sane.top1 - 1.0


def test_raw_pixel_and_random_encoder_features(tmp_path):
    cfg = load_config(SMOKE).resolved()
    raw = F.compute_features(cfg, None, raw_pixels=True)
    assert raw.train.shape == (64, 28 * 28) and raw.val.shape == (32, 28 * 28) and raw.pool == "pixels"
    rnd = F.compute_features(cfg, F.RANDOM_CHECKPOINT)
    assert rnd.train.shape == (64, cfg.model.embed_dim) and rnd.source == "random"
    assert torch.equal(rnd.train, F.compute_features(cfg, F.RANDOM_CHECKPOINT).train)  # seeded initialisation
    avg = F.compute_features(cfg, F.RANDOM_CHECKPOINT, pool="avg")
    assert not torch.equal(avg.train, rnd.train)
    path = F.save_features(tmp_path / "f.pth", rnd)
    back = F.load_features(path)
    assert torch.equal(back.val, rnd.val) and back.num_classes == rnd.num_classes
    knn = F.knn_of_features(raw)
    assert 0 <= knn["top1"] <= 100 and knn["time_s"] >= 0


def test_cached_linprobe_run_writes_the_contract(tmp_path):
    from mae import train
    cfg = load_config(SMOKE, ["linprobe.features=cached", "linprobe.epochs=30"])
    metrics = train.linprobe(cfg, tmp_path / "run")
    assert {"top1", "probe_epochs", "probe_converged", "feature_time_s"} <= set(metrics)
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["top1"] == metrics["top1"] and "loss" in records[0]
    assert metrics["trainable_params"] < metrics["num_params"]
    # the same features' k-NN comes with the probe (what `mae knn` gives for this encoder)
    features = F.compute_features(cfg.resolved(), None)
    assert metrics["knn_top1"] == F.knn_of_features(features)["top1"]


def test_a_probe_reads_its_pretrainings_features_and_gets_the_same_bits(tmp_path):
    from mae import train
    cfg = load_config(SMOKE, ["linprobe.features=cached", "linprobe.epochs=30"])
    train.pretrain(cfg, tmp_path / "pretrain")
    saved = tmp_path / "pretrain" / F.FEATURES_FILE
    assert saved.is_file()  # kept: this config probes on cached features
    probe_cfg = load_config(SMOKE, ["linprobe.features=cached", "linprobe.epochs=30",
                                    f"linprobe.checkpoint={tmp_path / 'pretrain' / 'model.pth'}"])
    reused = train.linprobe(probe_cfg, tmp_path / "reused")
    saved.rename(tmp_path / "kept.pth")
    computed = train.linprobe(probe_cfg, tmp_path / "computed")
    assert reused["features_reused"] and not computed["features_reused"]
    assert reused["run_id"] == computed["run_id"]
    for name in ("top1", "top5", "final_loss", "probe_epochs", "knn_top1", "knn_top5"):
        assert reused[name] == computed[name], name
    # the kept features are bitwise the ones the probe computes from model.pth
    kept = F.load_features(tmp_path / "kept.pth")
    again = F.compute_features(probe_cfg.resolved(), tmp_path / "pretrain" / "model.pth")
    assert torch.equal(kept.train, again.train) and torch.equal(kept.val, again.val) and kept.key == again.key
    # features whose key differs (other weights) are not read: the probe computes its own
    kept.key = {**kept.key, "encoder_sha256": "0" * 64}
    kept.train = torch.zeros_like(kept.train)
    F.save_features(saved, kept)
    other = train.linprobe(probe_cfg, tmp_path / "other")
    assert not other["features_reused"] and other["top1"] == computed["top1"]
    # a damaged file, or one that would run code to load, is not read either (weights_only): computed again
    for damaged in (b"not a features file", pickle.dumps(Marker(tmp_path / "marker"), protocol=2)):
        saved.write_bytes(damaged)
        again = train.linprobe(probe_cfg, tmp_path / f"damaged{len(damaged)}")
        assert not again["features_reused"] and again["top1"] == computed["top1"]
    assert not (tmp_path / "marker").exists()


class Marker:
    """Unpickling it would create `path` (a file that runs code when loaded)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_features_key_follows_weights_images_and_settings():
    cfg = load_config(SMOKE).resolved()
    encoder = F.build_encoder(cfg, F.RANDOM_CHECKPOINT)
    key = F.features_key(cfg, encoder, "token", "cpu", 1, 256)
    assert key == F.features_key(cfg, F.build_encoder(cfg, F.RANDOM_CHECKPOINT), "token", "cpu", 1, 256)
    other_seed = F.build_encoder(load_config(SMOKE, ["run.seed=1"]).resolved(), F.RANDOM_CHECKPOINT)
    assert F.features_key(cfg, other_seed, "token", "cpu", 1, 256) != key
    assert F.features_key(load_config(SMOKE, ["data.train_subset=32"]).resolved(), encoder, "token", "cpu", 1,
                          256) != key
    for changed in (("avg", "cpu", 1, 256), ("token", "cpu", 2, 256), ("token", "cpu", 1, 128)):
        assert F.features_key(cfg, encoder, *changed) != key


def test_a_pretraining_keeps_no_features_when_its_probe_is_not_cached(tmp_path):
    from mae import train
    train.pretrain(load_config(SMOKE, ["linprobe.features=augmented"]), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / F.FEATURES_FILE).exists()


def test_pixels_linprobe_run_is_the_raw_pixel_reference(tmp_path):
    from mae import train
    cfg = load_config(SMOKE, ["linprobe.features=pixels", "linprobe.epochs=30"])
    metrics = train.linprobe(cfg, tmp_path / "run")
    raw = F.compute_features(cfg.resolved(), None, raw_pixels=True)
    assert metrics["knn_top1"] == F.knn_of_features(raw)["top1"]
    assert metrics["num_params"] == metrics["trainable_params"] == (28 * 28 + 1) * 10  # the head alone
    with pytest.raises(UserError, match=r"linprobe.checkpoint='m.pth' is invalid: allowed null with linprobe.features=pixels"):
        load_config(SMOKE, ["linprobe.features=pixels", "linprobe.checkpoint=m.pth"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mae.cli", *args], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, needle", [
    (["knn", "--config", str(SMOKE)], "--checkpoint"),
    (["knn", "--config", str(SMOKE), "--checkpoint", "random", "--raw-pixels"], "exactly one"),
    (["knn", "--config", str(SMOKE), "--checkpoint", "missing.pth"], "--checkpoint='missing.pth' is invalid"),
    (["features", "--config", str(SMOKE), "--raw-pixels", "--pool", "max", "--out", "x.pth"], "--pool='max'"),
    (["knn", "--config", str(SMOKE), "--raw-pixels", "data.nope=1"], "unknown key"),
])
def test_cli_one_line_errors(args, needle):
    out = _cli(*args)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and needle in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_knn_on_a_cuda_device_this_machine_lacks_is_one_line():
    # it was torch's "Found no NVIDIA driver" traceback, exit 1
    out = _cli("knn", "--config", str(SMOKE), "--raw-pixels", "--device", "cuda")
    assert (out.returncode, out.stderr) == (2, "error: --device='cuda' is invalid: allowed 'cpu' (no CUDA device "
                                               "is visible)\n")


def test_feature_passes_say_what_they_compute_and_how_far_they_are(monkeypatch, caplog):
    # `mae knn` on a big split was minutes of silence; without a terminal (a cluster log) a line comes every
    # PROGRESS_EVERY_S seconds (0 here: one per batch), and only from the main process
    cfg = load_config(SMOKE, ["data.train_subset=40"]).resolved()
    monkeypatch.setattr(F, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="mae"):
        F.compute_features(cfg, F.RANDOM_CHECKPOINT, batch_size=16)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "features: train split, 40 images (encoder random, pool token)"
    assert [m.split(" (")[0] for m in lines if "of 40" in m] == ["features: train: 16 of 40 images",
                                                                 "features: train: 32 of 40 images",
                                                                 "features: train: 40 of 40 images"]
    caplog.clear()
    with caplog.at_level("INFO", logger="mae"):
        quiet = F._Progress("features: train", 40, enabled=False)  # another rank's
        quiet.update(40)
        quiet.close()
    assert caplog.records == []


def test_cli_knn_logs_on_stderr_and_prints_only_its_json_on_stdout():
    out = _cli("knn", "--config", str(SMOKE), "--raw-pixels")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and json.loads(out.stdout)["knn_top1"] >= 0
    assert "INFO features: train split, 64 images (raw pixels)" in out.stderr


def test_cli_features_to_npz_load_in_numpy_without_pickle(tmp_path):
    # `--out f.npz` is a NumPy archive (it used to be a torch file named .npz, which numpy.load refuses)
    import numpy as np
    out = _cli("features", "--config", str(SMOKE), "--raw-pixels", "--out", str(tmp_path / "f.npz"))
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "f.npz") as archive:  # allow_pickle=False, numpy's default
        assert archive["train"].shape == (64, 28 * 28) and archive["val"].shape == (32, 28 * 28)
        assert archive["train_labels"].dtype == np.int64 and str(archive["pool"]) == "pixels"
        assert int(archive["num_classes"]) == 10
    back = F.load_features(tmp_path / "f.npz")
    again = F.compute_features(load_config(SMOKE).resolved(), None, raw_pixels=True)
    assert torch.equal(back.train, again.train) and torch.equal(back.val_labels, again.val_labels)
    assert (back.source, back.key, back.reused_from) == ("raw_pixels", None, None)


def test_features_files_round_trip_in_both_formats(tmp_path):
    features = F.compute_features(load_config(SMOKE).resolved(), F.RANDOM_CHECKPOINT)
    for name in ("f.pth", "f.npz"):
        back = F.load_features(F.save_features(tmp_path / name, features))
        for field in ("train", "train_labels", "val", "val_labels"):
            assert torch.equal(getattr(back, field), getattr(features, field)), (name, field)
        assert (back.num_classes, back.source, back.pool, back.key) == (
            features.num_classes, features.source, features.pool, features.key), name
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a features file"):
        F.load_features(tmp_path / "bad.npz")


def test_cli_knn_prints_json(tmp_path):
    out = _cli("knn", "--config", str(SMOKE), "--raw-pixels", "--linprobe", "linprobe.epochs=20")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["source"] == "raw_pixels" and 0 <= result["knn_top1"] <= 100 and "linprobe_top1" in result


def test_cli_knn_of_a_pretraining_reads_its_config_from_the_model_pth(tmp_path):
    # Without --config, a model.pth of `mae pretrain` gives its own architecture and data: the k-NN the run
    # measured comes back (overrides still apply). Before, the defaults (ViT-L, ImageNet) refused it.
    run = tmp_path / "pt"
    assert _cli("pretrain", "--config", str(SMOKE), "--out", str(run)).returncode == 0
    measured = json.loads((run / "metrics.json").read_text())
    out = _cli("knn", "--checkpoint", str(run / "model.pth"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["knn_top1"], result["knn_top5"]) == (measured["knn_top1"], measured["knn_top5"])
    assert result["train_images"] == load_config(SMOKE).data.train_subset
    out = _cli("features", "--checkpoint", str(run / "model.pth"), "--out", str(tmp_path / "f.pth"),
               "data.train_subset=16")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["train_images"] == 16
