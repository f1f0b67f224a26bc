"""`mae` command line.

    mae pretrain --config workflow/presets/tiny.yaml model.mask_ratio=0.9 --out runs/x
    mae finetune --config C.yaml finetune.checkpoint=runs/x/model.pth --out runs/y
    mae linprobe --config C.yaml linprobe.checkpoint=runs/x/model.pth --out runs/z
    mae visualize --checkpoint runs/x/model.pth --out recon.png [--mask-ratios 0.75,0.85,0.95] [--num-images 4]
    mae replay runs/x
    torchrun --standalone --nproc_per_node=2 -m mae.cli pretrain --config C.yaml --out runs/x

Exit codes: 0 done; 2 user error (one line on stderr, nothing written that looks finished);
3 non-finite loss; 75 checkpointed on SIGTERM / SIGUSR1 or run.stop_after_steps (run again to resume).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from mae.errors import UserError

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
    vis.add_argument("--checkpoint", required=True, help="model.pth written by `mae pretrain`")
    vis.add_argument("--out", required=True, help="PNG to write")
    vis.add_argument("--mask-ratios", default="0.75,0.85,0.95", help="comma-separated ratios")
    vis.add_argument("--num-images", type=int, default=4)
    vis.add_argument("--seed", type=int, default=0)
    vis.add_argument("--device", default="cpu")
    replay = commands.add_parser("replay", help="push a run folder's metrics.jsonl into MLflow (idempotent)")
    replay.add_argument("run_dir")
    return parser


def _parse_ratios(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError("--mask-ratios", text, "comma-separated numbers like 0.75,0.85,0.95") from None


def run(argv: list[str]) -> int:
    """Run one command; returns the exit code (UserError and training stops are raised to `main`)."""
    args, extra = _parser().parse_known_args(argv)
    if args.command in ("pretrain", "finetune", "linprobe"):
        # Overrides may also come after `--out DIR`; argparse hands those back as unknown arguments.
        args.overrides = [*args.overrides, *extra]
        extra = [e for e in extra if e.startswith("-")]
    if extra:
        raise UserError.message("arguments", f"mae {args.command}: unrecognized arguments: {' '.join(extra)}")
    if args.command in ("pretrain", "finetune", "linprobe"):
        from mae import train
        from mae.config import load_config
        # `--out` may come after the overrides: argparse already took it out of the positional list.
        stray = [o for o in args.overrides if "=" not in o]
        if stray:
            raise UserError("override", stray[0], "'section.key=value' (e.g. model.mask_ratio=0.9)")
        cfg = load_config(args.config, args.overrides)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UserError("--out", args.out, "a folder (it is a file or a special path)")
        command = shlex.join(["mae", *argv])
        getattr(train, args.command)(cfg, args.out, command=command)
        return 0
    if args.command == "visualize":
        from mae.visualize import visualize_checkpoint
        path = visualize_checkpoint(args.checkpoint, args.out, mask_ratios=_parse_ratios(args.mask_ratios),
                                    num_images=args.num_images, seed=args.seed, device=args.device)
        print(path)
        return 0
    if args.command == "replay":
        from mae.tracking import replay
        if not os.path.isdir(args.run_dir):
            raise UserError("run_dir", args.run_dir, "an existing run folder")
        replay(args.run_dir)
        return 0
    raise UserError("command", args.command, "pretrain, finetune, linprobe, visualize or replay")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps UserError to exit 2 and training stops to their exit codes."""
    import logging
    from mae.engine import TrainingStopped
    from mae.errors import user_error_from_os
    logging.raiseExceptions = False  # a log line that cannot be written (full disk) is no traceback
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            code = run(argv)
        except OSError as exc:  # a full disk, a path that is a file, no permission: the user's to fix
            raise user_error_from_os(exc) or exc
    except UserError as exc:
        message = " ".join(str(exc).split())  # one line, always
        print(f"error: {message}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except TrainingStopped as exc:
        print(f"stopped: {' '.join(str(exc).split())}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        from mae import distributed
        distributed.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
