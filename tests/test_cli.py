"""`mae` CLI: user errors exit 2 with one `error:` line and no traceback, and leave nothing finished."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mae import cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.arch=mae_vit_micro_patch7_dec64d1b", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
        "model.decoder_embed_dim=32", "model.decoder_num_heads=2", "data.name=synthetic", "data.train_subset=32",
        "data.val_subset=8", "pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.batch_size=16",
        "run.threads=1", "tracking.enabled=false"]
# `mae` on argv, then whether torch was imported on stdout, then its exit code
MAIN_REPORTING_TORCH = ("import sys; from mae import cli; code = cli.main(sys.argv[1:]); "
                        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)")


@pytest.mark.parametrize("args, words", [
    (["pretrain", "--config", "missing.yaml", "--out", "{out}"], ["--config", "missing.yaml"]),
    (["pretrain", "--out", "{out}", "model.mask_ratoi=0.5"], ["model.mask_ratoi", "'model.mask_ratio'"]),
    (["pretrain", "--out", "{out}", "model.mask_ratio=1.5"], ["model.mask_ratio=1.5", "[0.0, 1.0)"]),
    (["pretrain", "--out", "{out}", *TINY, "pretrain.batch_size=48", "pretrain.micro_batch_size=32"],
     ["pretrain.batch_size=48", "micro_batch_size"]),
    (["finetune", "--out", "{out}", *TINY, "finetune.batch_size=16", "finetune.checkpoint={out}/nope.pth"],
     ["nope.pth"]),
    (["pretrain", "--out", "{out}", "--bogus"], ["unrecognized", "--bogus"]),
    (["pretrian", "--out", "{out}"], ["invalid choice"]),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, words):
    out = tmp_path / "run"
    code = cli.main([a.replace("{out}", str(out)) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    assert not (out / "metrics.json").exists() and not (out / "model.pth").exists()


def test_subprocess_exit_code_and_clean_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mae.cli", "pretrain", "--out", str(tmp_path / "r"),
                           "data.name=mnist"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: data.name='mnist' is invalid")


def test_a_stop_signal_while_a_user_error_is_reported_keeps_exit_2(tmp_path):
    """torchrun SIGTERMs the other workers once one exits 2 with the same user error: a signal that lands
    while the error line is being written (here: from inside its redaction) must not make it a traceback
    (it did: exit 1, a StopRequested traceback, in a two-process run)."""
    code = ("import os, signal, sys; import mae.redaction as r; from mae import cli; plain = r.redact_text\n"
            "def late(text):\n    os.kill(os.getpid(), signal.SIGTERM); return plain(text)\n"
            "r.redact_text = late; sys.exit(cli.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "pretrain", "--out", str(tmp_path / "out"),
                             "model.mask_ratio=1.5"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert result.stderr.startswith("error: model.mask_ratio=1.5 is invalid")


@pytest.mark.parametrize("args", [
    ["pretrain", "--out", "{out}", "model.mask_ratio=1.5"],
    ["finetune", "--config", "missing.yaml", "--out", "{out}"],
    ["linprobe", "--out", "{out}", "linprobe.bogus=1"],
    ["knn", "--checkpoint", "random", "data.name=imagenet2"],
    ["features", "--raw-pixels", "--out", "{out}", "--pool", "max"],
    ["config", "--stage", "pretrain", "model.mask_ratio=1.0"],
    ["config", "--stage", "finetune", "finetune.checkpoint={out}/none.pth"],  # as `mae finetune` checks it
    ["knn", "--checkpoint", "{out}/none.pth"],
    ["visualize", "--checkpoint", "{out}/none.pth", "--out", "{out}/r.png"],
    ["visualize", "--checkpoint", "{out}/none.pth", "--out", "{out}/r.png", "--num-images", "5000"],
    ["visualize", "--checkpoint", "{out}/none.pth", "--out", "{out}/r.png", "--mask-ratios", "0.75,1.5"],
    ["visualize", "--checkpoint", "{out}/none.pth", "--out", "{out}/r.png", "--device", "tpu"],
    ["visualize", "--checkpoint", "{out}/none.pth", "--out", "{out}/r.png", "data.root"],
    # rules that need the named architecture, the stage or the world size, and the stage's weights file
    ["pretrain", "--out", "{out}", "model.arch=mae_vit_gigantic"],
    ["pretrain", "--out", "{out}", "model.arch=mae_vit_micro_patch7_dec64d1b", "model.img_size=30"],
    ["pretrain", "--out", "{out}", "model.arch=mae_vit_micro_patch7_dec64d1b", "model.mask_ratio=0.99"],
    ["finetune", "--out", "{out}", "finetune.batch_size=32", "finetune.micro_batch_size=5"],
    ["finetune", "--out", "{out}", "finetune.checkpoint={out}/none.pth"],
    ["linprobe", "--out", "{out}", "linprobe.checkpoint={out}"],
    # data.root without what data.name reads there (by name: the contents need the data read)
    ["pretrain", "--out", "{out}", "data.name=fashion_mnist", "data.root={out}/none"],
    ["finetune", "--out", "{out}", "data.name=cifar10", "data.root={tmp}"],
    ["linprobe", "--out", "{out}", "data.name=imagenet", "data.root={tmp}"],
    ["pretrain", "--out", "{out}", "data.name=imagenet", "data.root=null"],
    ["knn", "--checkpoint", "random", "data.name=fashion_mnist", "data.root={tmp}"],
    # an --out that cannot be made a run folder
    ["pretrain", "--out", "/dev/null/run", "data.name=synthetic"],
    ["finetune", "--out", "/proc/no-such-folder/run", "data.name=synthetic"],
    ["pretrain", "--out", "/sys", "data.name=synthetic"],  # root may, by os.access; sysfs refuses the file
    # the file `mae features` writes: its folder is made, and checked, before torch
    ["features", "--raw-pixels", "--out", "/dev/null/x/f.npz", "data.name=synthetic"],
    ["features", "--raw-pixels", "--out", "/sys/f.npz", "data.name=synthetic"],
    ["features", "--raw-pixels", "--out", "{tmp}", "data.name=synthetic"],
    ["features", "--raw-pixels", "--out", "{tmp}/f.npy", "data.name=synthetic"],  # .pth, .pt or .npz
    # never over the weights it reads, nor over a run's model.pth / checkpoint.pth (it replaced them)
    ["features", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/model.pth", "data.name=synthetic"],
    ["features", "--raw-pixels", "--out", "{tmp}/model.pth", "data.name=synthetic"],
    ["features", "--raw-pixels", "--device", "gpu", "--out", "{tmp}/f.pth", "data.name=synthetic"],
    ["knn", "--raw-pixels", "--device", "cuda:x", "data.name=synthetic"],
    ["knn", "--raw-pixels", "--pool", "avg", "data.name=synthetic"],  # pixels are not pooled: it was ignored
    ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "/sys/r.png"],
    ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}"],
    ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/r.gif"],  # no format matplotlib writes here
    ["visualize", "--checkpoint", "{tmp}/model.pth", "--out", "{tmp}/r.png", "model.mask_ratio=0.9"],  # --mask-ratios
])
def test_a_bad_config_is_reported_before_torch_is_imported(tmp_path, args):
    """A typo costs a tenth of a second, not the seconds torch and timm take to import."""
    argv = [a.replace("{out}", str(tmp_path / "out")).replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "model.pth").write_bytes(b"")  # an existing file: visualize reads it only after torch
    result = subprocess.run([sys.executable, "-c", MAIN_REPORTING_TORCH, *argv], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
    assert result.stdout.strip() == "torch not imported"
    assert not (tmp_path / "out").exists()  # no run folder, no train.log


def test_a_finished_run_run_again_says_so_in_one_line_before_torch(tmp_path):
    """By hand, the same command again on a finished run folder: exit 0 and one line saying there is
    nothing to do, without importing torch (it used to take 3 s and print nothing); the folder unchanged."""
    import json

    from mae.config import identity, load_config
    config = REPO / "workflow/presets/smoke.yaml"
    out = tmp_path / "run"
    out.mkdir()
    run_id = identity(load_config(config, []).resolved(), "pretrain")
    (out / "metrics.json").write_text(json.dumps({"status": "completed", "stage": "pretrain", "run_id": run_id}))
    result = subprocess.run([sys.executable, "-c", MAIN_REPORTING_TORCH, "pretrain", "--config", str(config),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "torch not imported"), result.stderr
    assert result.stderr == (f"{out} holds this pretrain run ({run_id}), finished: nothing to do (its results are "
                             f"in {out / 'metrics.json'})\n")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"),
                    reason="needs root to mount a read-only tmpfs")
def test_an_out_folder_on_a_read_only_file_system_is_one_line(tmp_path):
    """Root may write anywhere but on a read-only file system: said before torch, for a folder to make
    there and for one that is there."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mount refused (a container without CAP_SYS_ADMIN)")
    try:
        for out, allowed in [(mount / "run", "a folder that can be created (read-only file system)"),
                             (mount, "a folder this user can write in (read-only file system)")]:
            result = subprocess.run([sys.executable, "-m", "mae.cli", "pretrain", "--out", str(out), "data.name=synthetic"],
                                    capture_output=True, text=True, timeout=120)
            assert (result.returncode, result.stderr) == (2, f"error: --out={str(out)!r} is invalid: allowed {allowed}\n")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_config_prints_what_a_run_used_and_loads_again(tmp_path, capsys):
    import yaml

    run = tmp_path / "run"
    assert cli.main(["pretrain", "--out", str(run), *TINY]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    capsys.readouterr()
    assert cli.main(["config", "--config", str(run / "config.yaml"), "--stage", "pretrain"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["meta"] == {"stage": "pretrain", "run_id": recorded["meta"]["run_id"]}
    assert {k: v for k, v in printed.items() if k != "meta"} == {k: v for k, v in recorded.items() if k != "meta"}
    # Printed with an override and saved, it is a config file: the run id follows the override.
    saved = tmp_path / "printed.yaml"
    assert cli.main(["config", "--config", str(run / "config.yaml"), "model.mask_ratio=0.5"]) == 0
    saved.write_text(capsys.readouterr().out)
    assert cli.main(["config", "--config", str(saved), "--stage", "pretrain"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    assert again["model"]["mask_ratio"] == 0.5 and again["meta"]["run_id"] != recorded["meta"]["run_id"]


def test_config_fills_the_arch_redacts_credentials_and_never_imports_torch(tmp_path):
    import yaml

    code = ("import sys; from mae import cli; code = cli.main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported', file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, "config", "--config", str(REPO / "workflow/presets/tiny.yaml"),
                             "tracking.uri=http://alice:s3cret@mlflow:5000"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "torch not imported", result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["embed_dim"] == 128 and printed["model"]["patch_size"] == 7  # from model.arch
    assert "s3cret" not in result.stdout and "mlflow:5000" in printed["tracking"]["uri"]


def test_rectangular_images_pretrain_finetune_linprobe_and_visualize(tmp_path):
    """model.img_size=[14, 28]: 2x4 patches end to end (official MAE takes squares only)."""
    wide = [*TINY, "model.img_size=[14,28]"]
    pt, ft, lp = tmp_path / "pt", tmp_path / "ft", tmp_path / "lp"
    assert cli.main(["pretrain", "--out", str(pt), *wide]) == 0
    assert cli.main(["finetune", "--out", str(ft), *wide, "finetune.epochs=1", "finetune.warmup_epochs=0",
                     "finetune.batch_size=16", f"finetune.checkpoint={pt / 'model.pth'}"]) == 0
    assert cli.main(["linprobe", "--out", str(lp), *wide, "linprobe.epochs=1", "linprobe.warmup_epochs=0",
                     "linprobe.batch_size=16", f"linprobe.checkpoint={pt / 'model.pth'}"]) == 0
    for run in (pt, ft, lp):
        assert (run / "metrics.json").exists()
    png = tmp_path / "wide.png"
    assert cli.main(["visualize", "--checkpoint", str(pt / "model.pth"), "--out", str(png), "--num-images", "2"]) == 0
    from PIL import Image
    width, height = Image.open(png).size
    assert width > 6 * height  # 2 rows of 10 images twice as wide as tall (square ones: 4.6)


def test_pretrain_then_visualize(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["pretrain", "--out", str(run), *TINY]) == 0
    assert (run / "metrics.json").exists() and (run / "recon.png").stat().st_size > 0
    png = tmp_path / "grid.png"
    assert cli.main(["visualize", "--checkpoint", str(run / "model.pth"), "--out", str(png),
                     "--mask-ratios", "0.5,0.75", "--num-images", "2"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["visualize", "--checkpoint", str(run / "model.pth"), "--out", str(png),
                     "--mask-ratios", "1.2"]) == 2
    assert "--mask-ratios" in capsys.readouterr().err


def test_a_user_error_once_training_code_runs_leaves_no_run_folder_behind(tmp_path):
    # Weights that do not fit, found after torch is imported, left a run folder (config.yaml, an empty
    # metrics.jsonl, a FAILED MLflow run) or an empty one; a folder that existed before stays.
    import torch

    from mae.model import create_mae_model
    weights = tmp_path / "model.pth"
    torch.save({"model": create_mae_model("mae_vit_micro_patch7_dec64d1b", img_size=28, in_chans=1).state_dict()},
               weights)
    probe = ["linprobe", "--config", str(REPO / "workflow/presets/tiny.yaml"), "model.depth=2",
             f"linprobe.checkpoint={weights}"]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "mae.cli", *probe, "--out", str(out)], capture_output=True,
                            text=True, timeout=300)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
    assert "the model expects embed_dim 128 / depth 2" in result.stderr and not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    result = subprocess.run([sys.executable, "-m", "mae.cli", *probe, "--out", str(kept)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and kept.is_dir()


@pytest.mark.parametrize("args, hint", [
    (["pretrain", "--out", "x", "--epochs", "3"], "unrecognized arguments: --epochs (config keys are set as "
                                                  "key=value, e.g. pretrain.epochs=...)"),
    (["finetune", "--out", "x", "--blr=1e-3"], "unrecognized arguments: --blr=1e-3 (config keys are set as key=value, "
                                               "e.g. finetune.blr=1e-3)"),
    (["knn", "--raw-pixels", "--mask-ratio", "0.5"], "(config keys are set as key=value, e.g. model.mask_ratio=...)"),
])
def test_a_flag_that_is_a_config_key_says_how_keys_are_set(tmp_path, args, hint):
    result = subprocess.run([sys.executable, "-m", "mae.cli", *args], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1) and hint in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()
