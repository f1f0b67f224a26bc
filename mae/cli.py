"""`mae` command line.

    mae pretrain --config workflow/presets/tiny.yaml model.mask_ratio=0.9 --out runs/x
    mae finetune --config C.yaml finetune.checkpoint=runs/x/model.pth --out runs/y
    mae linprobe --config C.yaml linprobe.checkpoint=runs/x/model.pth --out runs/z
    mae visualize --checkpoint runs/x/model.pth --out recon.png [--mask-ratios 0.75,0.85,0.95] [--num-images 4]
    mae visualize --checkpoint checkpoint-799.pth --out recon.png data.root=/data/imagenet   # official files too
    mae replay runs/x [--uri http://host:5000]      # default: env MLFLOW_TRACKING_URI, then the run's tracking.uri
    mae features --checkpoint runs/x/model.pth --config C.yaml --out f.pth|f.npz [--pool token|avg] [--raw-pixels]
    mae knn --checkpoint runs/x/model.pth|random --config C.yaml [--raw-pixels] [--linprobe] [key=value ...]
    mae config --config C.yaml [--stage finetune] [key=value ...]   # the resolved config as YAML (+ run id)
    torchrun --standalone --nproc_per_node=2 -m mae.cli pretrain --config C.yaml --out runs/x

Exit codes: 0 done; 2 user error (one line on stderr, nothing written that looks finished);
3 non-finite loss; 75 checkpointed on SIGTERM / SIGUSR1 or run.stop_after_steps (run again to resume).
The SIGTERM / SIGUSR1 handlers are installed before anything else (mae.signals): a signal before
training has state to save also exits 75, with one line and nothing written that looks finished.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

from mae.errors import USER_ERRNOS, UserError
from mae.signals import STOP_SIGNALS, StopRequested, install_stop_handlers, raise_pending_stop

EXIT_USER_ERROR = 2


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (one line, exit 2) instead of usage dumps."""

    def error(self, message: str):
        raise UserError.message("arguments", f"{self.prog}: {message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="mae", description="Masked autoencoder pretraining, fine-tuning, linear probing.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)
    for stage, text in (("pretrain", "MAE pretraining"), ("finetune", "end-to-end fine-tuning"),
                        ("linprobe", "linear probing of the frozen encoder")):
        sub = commands.add_parser(stage, help=text, description=f"{text}. Precedence: defaults < --config < key=value.")
        sub.add_argument("--config", help="YAML file with model:, data:, pretrain:, ... sections")
        sub.add_argument("--out", required=True, help="run folder (created; resumed if it holds a checkpoint)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.mask_ratio=0.9")
    vis = commands.add_parser("visualize", help="reconstruction grid of a pretrained model.pth")
    vis.add_argument("--checkpoint", required=True, help="model.pth written by `mae pretrain`, or an official MAE "
                     "training checkpoint-N.pth")
    vis.add_argument("--out", required=True, help="image to write: .png, .pdf, .svg or .jpg (the format follows "
                     "the suffix)")
    vis.add_argument("--mask-ratios", default="0.75,0.85,0.95", help="comma-separated ratios")
    vis.add_argument("--num-images", type=int, default=4)
    vis.add_argument("--seed", type=int, default=0)
    vis.add_argument("--device", default="cpu")
    vis.add_argument("overrides", nargs="*", metavar="key=value",
                     help="changes to the checkpoint's config, e.g. data.root=/data/imagenet (where the images are)")
    for name, text in (("features", "frozen-encoder features of the config's train and val splits, to a file"),
                       ("knn", "k-NN accuracy (k 20, cosine, T 0.07) of a frozen encoder, printed as JSON")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", help="YAML file (model: gives the encoder, data: the splits); default: the "
                         "config a model.pth of `mae pretrain` carries (the run's own data), else the defaults")
        sub.add_argument("--checkpoint", help="model.pth, or 'random' (the arch's seeded initialisation)")
        sub.add_argument("--raw-pixels", action="store_true", help="the normalised pixels instead of an encoder")
        sub.add_argument("--pool", default="token", help="token (cls, the paper's probe feature) or avg")
        sub.add_argument("--device", default="cpu")
        if name == "features":
            sub.add_argument("--out", required=True, help="file to write: .pth or .pt (torch, weights_only-loadable: "
                             "train, val, train_labels, val_labels, ...) or .npz (the same, NumPy)")
        else:
            sub.add_argument("--linprobe", action="store_true",
                             help="also train the cached linear probe with the config's linprobe recipe")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.train_subset=1000")
    show = commands.add_parser("config", help="print the resolved config as YAML (every key, arch fields filled)",
                               description="Print the config a run would use: defaults < --config < key=value, "
                               "architecture fields filled from model.arch. The output loads again with --config.")
    show.add_argument("--config", help="YAML file (a preset, or a run folder's config.yaml)")
    show.add_argument("--stage", help="pretrain, finetune or linprobe: also check that stage's rules and print "
                      "its run id (the run folder name the workflow gives it) in a meta: block")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.mask_ratio=0.9")
    replay = commands.add_parser("replay", help="push a run folder's metrics.jsonl into MLflow (idempotent)")
    replay.add_argument("run_dir")
    replay.add_argument("--uri", help="tracking URI (default: env MLFLOW_TRACKING_URI, then the run's tracking.uri)")
    return parser


def _key_hint(flag: str, command: str) -> str:
    """' (config keys are set as key=value, e.g. pretrain.epochs=3)' when `flag` (`--epochs`, `--epochs=3`)
    names a config key; '' otherwise."""
    from mae.config import keys_named
    name, _, value = flag.lstrip("-").partition("=")
    keys = keys_named(name, command)
    if not keys:
        return ""
    return f" (config keys are set as key=value, e.g. {keys[0]}={value or '...'})"


def _check_overrides(overrides: list[str], example: str) -> None:
    """Every positional argument left is a `section.key=value` override."""
    stray = [o for o in overrides if "=" not in o]
    if stray:
        raise UserError("override", stray[0], f"'section.key=value' (e.g. {example})")


def _check_checkpoint_file(path: str, allowed: str, field: str = "--checkpoint") -> None:
    """`field` names a file: said before torch is imported, not seconds later."""
    if not os.path.isfile(path):
        raise UserError(field, path, allowed)


def _remove_if_untouched(out: str) -> None:
    """Remove the run folder this command made when a user error stopped it before anything was written
    there but the log file's empty start (a CUDA device that is not there, weights that do not fit)."""
    from mae.run_folder import TRAIN_LOG
    try:
        entries = os.listdir(out)
        if all(name == TRAIN_LOG and os.path.getsize(os.path.join(out, name)) == 0 for name in entries):
            for name in entries:
                os.remove(os.path.join(out, name))
            os.rmdir(out)
    except OSError:
        pass  # another process writes there, or it is gone: leave it


def _check_not_weights(out: str, checkpoint: str | None) -> None:
    """`--out` may not replace the weights read (--checkpoint) or a run's existing model.pth / checkpoint.pth:
    one slip of tab completion would destroy a pretraining."""
    from mae.run_folder import WEIGHT_FILES
    if not os.path.exists(out):
        return
    if checkpoint and os.path.exists(checkpoint) and os.path.samefile(out, checkpoint):
        raise UserError("--out", out, "a file other than --checkpoint (writing there would replace the weights read)")
    if os.path.basename(out) in WEIGHT_FILES:
        raise UserError("--out", out, f"a new file, or one not named {', '.join(WEIGHT_FILES)} (an existing run's "
                        "weights or resume state would be replaced)")


def _make_out_folder(out: str, main_process: bool, file_in_it: bool = False) -> None:
    """Create the run folder `--out` on the main process (train makes the others wait for it) and check
    that it can be written: a path that cannot be a run folder is said before torch is imported. With
    `file_in_it`, `--out` names a file (`mae features`, `mae visualize`): its folder is made and checked."""
    folder = os.path.dirname(os.path.abspath(out)) if file_in_it else out
    made, writable = (("a file path whose folder can be created", "a file path in a folder this user can write in")
                      if file_in_it else ("a folder that can be created", "a folder this user can write in"))
    if not file_in_it and os.path.exists(out) and not os.path.isdir(out):
        raise UserError("--out", out, "a folder (it is a file or a special path)")
    if file_in_it and os.path.isdir(out):
        raise UserError("--out", out, "a file path (it is a folder)")
    if not main_process:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise UserError("--out", out, f"{made} ({USER_ERRNOS[exc.errno]})") from None
    # A file made and removed: os.access answers yes to root where the file system refuses (sysfs, a
    # read-only mount), and the write would then fail after seconds of imports, naming a file of the run.
    import tempfile
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mae-write-check-"):
            pass
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise UserError("--out", out, f"{writable} ({USER_ERRNOS[exc.errno]})") from None


def _parse_ratios(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError("--mask-ratios", text, "comma-separated numbers like 0.75,0.85,0.95") from None


def run(argv: list[str]) -> int:
    """Run one command; returns the exit code (UserError and training stops are raised to `main`)."""
    args, extra = _parser().parse_known_args(argv)
    if args.command in ("pretrain", "finetune", "linprobe", "features", "knn", "visualize", "config"):
        # Overrides may also come after `--out DIR`; argparse hands those back as unknown arguments.
        args.overrides = [*args.overrides, *extra]
        extra = [e for e in extra if e.startswith("-")]
    if extra:
        raise UserError.message("arguments", f"mae {args.command}: unrecognized arguments: {' '.join(extra)}"
                                + _key_hint(extra[0], args.command))
    if args.command in ("pretrain", "finetune", "linprobe"):
        # no torch before the checks below: a bad config is reported in a fraction of a second
        from mae.choices import CHECKPOINT_FILE_ALLOWED, batch_geometry, check_data_root
        from mae.config import check_stage, identity, load_config
        from mae.run_folder import METRICS_JSON, finished_metrics
        # `--out` may come after the overrides: argparse already took it out of the positional list.
        _check_overrides(args.overrides, "model.mask_ratio=0.9")
        cfg = load_config(args.config, args.overrides).resolved()  # fills the architecture, checks its rules
        check_stage(cfg, args.command)
        section = cfg.stage(args.command)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # as mae.distributed reads it (it imports torch)
        batch_geometry(args.command, section.batch_size, section.micro_batch_size, world_size)
        if section.checkpoint is not None:
            _check_checkpoint_file(section.checkpoint, CHECKPOINT_FILE_ALLOWED, field=f"{args.command}.checkpoint")
        # the training split, which every stage reads first; the evaluation split is checked when it is read
        check_data_root(cfg.data.name, cfg.data.root, "train", cfg.data.download)
        made_here = not os.path.exists(args.out)
        _make_out_folder(args.out, main_process=world_size <= 1 or os.environ.get("RANK") == "0")
        run_id = identity(cfg, args.command)
        if finished_metrics(args.out, args.command, run_id) is not None:  # another run there is a UserError
            print(f"{args.out} holds this {args.command} run ({run_id}), finished: nothing to do (its results are "
                  f"in {os.path.join(args.out, METRICS_JSON)})", file=sys.stderr)
            return 0
        command = shlex.join(["mae", *argv])
        from mae import train  # torch, timm: seconds
        try:
            getattr(train, args.command)(cfg, args.out, command=command)
        except UserError:
            if made_here:
                _remove_if_untouched(args.out)
            raise
        return 0
    if args.command in ("features", "knn"):
        return _features_command(args)
    if args.command == "visualize":
        from mae.choices import check_figure_file, check_figure_request  # no torch: said at once
        _check_overrides(args.overrides, "data.root=/data/imagenet")
        from mae.config import parse_override
        ratio = dict(map(parse_override, args.overrides)).get("model.mask_ratio")
        if ratio is not None:  # it would be ignored: the figure's columns are --mask-ratios
            raise UserError("model.mask_ratio", ratio, f"--mask-ratios {ratio} instead (the figure's ratios; "
                            "model.mask_ratio is the pretraining's)")
        ratios = _parse_ratios(args.mask_ratios)
        check_figure_request(ratios, args.num_images, args.seed, args.device)
        check_figure_file(args.out)
        _check_checkpoint_file(args.checkpoint, "an existing file (a model.pth written by `mae pretrain`, or an "
                               "official MAE checkpoint-N.pth)")
        _make_out_folder(args.out, main_process=True, file_in_it=True)
        from mae.visualize import visualize_checkpoint  # torch, timm: seconds
        path = visualize_checkpoint(args.checkpoint, args.out, mask_ratios=ratios,
                                    num_images=args.num_images, seed=args.seed, device=args.device,
                                    overrides=args.overrides)
        print(path)
        return 0
    if args.command == "config":
        return _config_command(args)
    if args.command == "replay":
        from mae.choices import check_tracking_uri
        from mae.tracking import replay
        if not os.path.isdir(args.run_dir):
            raise UserError("run_dir", args.run_dir, "an existing run folder")
        check_tracking_uri(args.uri, "--uri")
        result = replay(args.run_dir, uri=args.uri)
        print(f"{args.run_dir}: MLflow run {result['run_id']}, {result['metrics_logged']} metric points logged, "
              f"{result['metrics_skipped']} already there")
        return 0
    raise UserError("command", args.command,
                    "pretrain, finetune, linprobe, features, knn, visualize, config or replay")


def _config_command(args) -> int:
    """`mae config`: the resolved config on stdout as YAML; with --stage, its run id in `meta:`."""
    import yaml

    from mae.choices import CHECKPOINT_FILE_ALLOWED, STAGES
    from mae.config import identity, load_config
    from mae.errors import check_choice
    from mae.redaction import redact_tree
    _check_overrides(args.overrides, "model.mask_ratio=0.9")
    cfg = load_config(args.config, args.overrides).resolved()
    data = redact_tree(cfg.to_dict())  # as a run folder's config.yaml: no password, no token
    if args.stage is not None:
        check_choice("--stage", args.stage, STAGES)
        checkpoint = cfg.stage(args.stage).checkpoint
        if checkpoint is not None:  # as `mae <stage>` checks it
            _check_checkpoint_file(checkpoint, CHECKPOINT_FILE_ALLOWED, field=f"{args.stage}.checkpoint")
        data["meta"] = {"stage": args.stage, "run_id": identity(cfg, args.stage)}
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _features_command(args) -> int:
    """`mae features` / `mae knn`: one JSON line on stdout with the numbers and their cost."""
    import json

    from mae.choices import GLOBAL_POOLS, RANDOM_CHECKPOINT, check_data_root, check_device_name, check_features_file
    from mae.config import load_config
    from mae.errors import check_choice
    _check_overrides(args.overrides, "data.train_subset=1000")
    check_choice("--pool", args.pool, GLOBAL_POOLS)
    check_device_name(args.device)
    if args.raw_pixels and args.pool != "token":
        raise UserError("--pool", args.pool, "the default with --raw-pixels (pixels are used as they are, not pooled)")
    if args.raw_pixels == (args.checkpoint is not None):
        raise UserError.message("--checkpoint", f"mae {args.command}: give --checkpoint (a model.pth or "
                                "'random') or --raw-pixels, exactly one")
    if args.checkpoint not in (None, RANDOM_CHECKPOINT):
        _check_checkpoint_file(args.checkpoint, "an existing model.pth, or 'random'")
    if args.command == "features":
        check_features_file(args.out)
        _check_not_weights(args.out, args.checkpoint)
        _make_out_folder(args.out, main_process=True, file_in_it=True)
    cfg = _carried_config(args.checkpoint, args.overrides) if args.config is None else None
    cfg = cfg or load_config(args.config, args.overrides).resolved()
    check_data_root(cfg.data.name, cfg.data.root, "train", cfg.data.download)
    from mae import features as feats  # torch, after every check of the arguments
    from mae.distributed import check_device_present
    check_device_present(args.device)
    _log_progress_to_stderr()  # stdout is the JSON line
    features = feats.compute_features(cfg, args.checkpoint, pool=args.pool, raw_pixels=args.raw_pixels,
                                      device=args.device)
    result = {"source": features.source, "pool": features.pool, "dim": features.train.shape[1],
              "train_images": len(features.train_labels), "val_images": len(features.val_labels),
              "feature_time_s": round(features.extract_s, 3)}
    if args.command == "features":
        feats.save_features(args.out, features)
        result["out"] = args.out
    else:
        knn = feats.knn_of_features(features)
        result.update(knn_top1=knn["top1"], knn_top5=knn["top5"], knn_time_s=round(knn["time_s"], 3))
        if args.linprobe:
            probe = feats.probe_of_features(features, cfg)
            result.update(linprobe_top1=probe.top1, linprobe_top5=probe.top5, linprobe_epochs=probe.epochs,
                          linprobe_converged=probe.converged, linprobe_time_s=round(probe.time_s, 3))
    print(json.dumps(result))
    return 0


def _log_progress_to_stderr() -> None:
    """`mae`'s log lines (what is computed, progress on long feature passes) on stderr."""
    import logging

    from mae.redaction import log_handler
    logger = logging.getLogger("mae")
    logger.addHandler(log_handler(sys.stderr))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _carried_config(checkpoint: str | None, overrides: list[str]):
    """The resolved config a model.pth of `mae pretrain` carries, with the overrides; None for 'random', no
    checkpoint, or a file without one (released weights: the defaults describe them)."""
    from mae.choices import RANDOM_CHECKPOINT
    if checkpoint in (None, RANDOM_CHECKPOINT):
        return None
    from mae.checkpoint import load_model_and_config  # torch: the config is inside the weights file
    return load_model_and_config(checkpoint, overrides)[1]


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps UserError to exit 2 and training stops to their exit codes."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    install_stop_handlers()  # first of all: a SIGTERM during the imports below is exit 75 with one line, not 143
    import logging
    from mae.errors import user_error_from_os
    logging.raiseExceptions = False  # a log line that cannot be written (full disk) is no traceback
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            raise_pending_stop()  # one its launcher received for it before this process could act (mae.signals)
            code = run(argv)
        except OSError as exc:  # a full disk, a path that is a file, no permission: the user's to fix
            raise user_error_from_os(exc) or exc
    except UserError as exc:
        _ignore_stop_signals()  # decided: torchrun's SIGTERM, once another rank exited 2, must not make it a traceback
        from mae.redaction import redact_text
        message = redact_text(" ".join(str(exc).split()))  # one line, always, and no credential in it
        print(f"error: {message}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except StopRequested as exc:
        _ignore_stop_signals()
        print(f"stopped: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        _ignore_stop_signals()
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        engine = sys.modules.get("mae.engine")  # never imported: it cannot be a TrainingStopped
        if engine is None or not isinstance(exc, engine.TrainingStopped):
            raise
        _ignore_stop_signals()
        print(f"stopped: {' '.join(str(exc).split())}", file=sys.stderr)
        code = exc.exit_code
    finally:
        _ignore_stop_signals()
        distributed = sys.modules.get("mae.distributed")
        if distributed is not None:
            distributed.cleanup()
        for sig, handler in previous.items():
            _set_signal(sig, handler)
    return code


def _ignore_stop_signals() -> None:
    """The outcome is decided (reported, or about to be): a late stop signal must not turn it into a traceback."""
    for sig in STOP_SIGNALS:
        _set_signal(sig, signal.SIG_IGN)


def _set_signal(sig: int, handler) -> None:
    try:
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass


if __name__ == "__main__":
    sys.exit(main())
