#!/usr/bin/env python3
"""Run a preset's tuning sweeps on the validation split and pick each sweep's best value by code.

    .venv/bin/python scripts/tune.py workflow/tuning/tiny.yaml [--sweep NAME ...] [--runs runs/tuning]
    .venv/bin/python scripts/tune.py workflow/tuning/tiny.yaml --report-only

A sweep file (workflow/tuning/tiny.yaml) names the preset, `base` overrides for every run (they must hold
`data.val_split`: tuning never reads the test set), seeds, and sweeps. A sweep runs its `stages` (a
pretraining, then fine-tuning / linear probing from its model.pth; or a fine-tuning alone from scratch)
for each value of its `vary` key on top of `base` and its `set`; `best_of` takes a key's value from an
earlier sweep's winner; `curve: true` marks a sweep that measures a trend (level against epochs),
which has no winner. Each run is `mae <stage>` in a folder named by its run id under --runs, so a
run is done once and an interrupted sweep continues where it stopped (a run folder with metrics.json is
finished; `mae` resumes one with a checkpoint).

Writes results/<preset>/tuning/tuning.csv (one row per run: sweep, key, value, seed, stage, validation
top-1, k-NN top-1 of the pretraining, training seconds of the run and of the whole chain) and
tuning.md (one table per sweep: mean validation top-1 per value, the winner marked). The winner is
the value with the highest mean validation top-1 of the sweep's last stage, ties to the earlier value.

Exit status: 0 done; 1 a run (`mae <stage>`) failed; 2 a user mistake, one line on stderr and nothing
created or run: a bad sweep file, an unknown --sweep, a --sweep whose `best_of` sweeps have no finished
runs in tuning.csv yet (run those first), --report-only without a tuning.csv to report.
"""
from __future__ import annotations

import argparse
import fcntl
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mae.config import STAGES, identity, load_config  # noqa: E402
from mae.errors import UserError, user_error_from_os  # noqa: E402
from mae.run_folder import TRAIN_LOG, read_metrics  # noqa: E402
from mae.yaml_loading import load_yaml_file  # noqa: E402

SWEEP_KEYS = {"name", "stages", "set", "vary", "values", "best_of", "curve"}
REQUIRED_SWEEP_KEYS = ("name", "stages", "vary", "values")
TUNING_COLUMNS = ("sweep", "key", "value", "seed", "stage", "val_top1")  # read back from tuning.csv


@dataclass(frozen=True)
class Trial:
    sweep: str
    key: str
    value: object
    seed: int
    overrides: dict


def load_spec(path: Path) -> dict:
    spec = load_yaml_file(path, "sweep file")
    if not isinstance(spec, dict) or not isinstance(spec.get("sweeps"), list):
        raise UserError("sweeps", spec.get("sweeps") if isinstance(spec, dict) else spec, f"a list of sweeps in {path}")
    if not isinstance(spec.get("preset"), str) or not (REPO_ROOT / spec["preset"]).is_file():
        raise UserError("preset", spec.get("preset"), f"a preset file of the repository in {path}, "
                        "e.g. workflow/presets/tiny.yaml")
    if (spec.get("base") or {}).get("data.val_split") in (None, 0):
        raise UserError("base.data.val_split", (spec.get("base") or {}).get("data.val_split"),
                        "a number of held-out training images (tuning never reads the test set)")
    names = set()
    for i, sweep in enumerate(spec["sweeps"]):
        where = f"sweeps[{i}]"
        if not isinstance(sweep, dict):
            raise UserError(where, sweep, f"a mapping with the keys {list(REQUIRED_SWEEP_KEYS)}")
        missing = [key for key in REQUIRED_SWEEP_KEYS if key not in sweep]
        if missing:
            raise UserError.message(where, f"{where} of {path} has no {missing[0]!r}: allowed a sweep with the "
                                    f"keys {list(REQUIRED_SWEEP_KEYS)}")
        unknown = set(sweep) - SWEEP_KEYS
        if unknown:
            raise UserError(f"{where}", sorted(unknown)[0], f"one of {sorted(SWEEP_KEYS)}")
        for stage in sweep.get("stages", []):
            if stage not in STAGES:
                raise UserError(f"{where}.stages", stage, f"one of {list(STAGES)}")
        for key, source in (sweep.get("best_of") or {}).items():
            if source not in names:
                raise UserError(f"{where}.best_of.{key}", source, f"an earlier sweep that is not a curve: "
                                f"{sorted(names) or 'none'}")
        if not sweep.get("curve"):  # a curve measures a trend (e.g. level against epochs): it has no winner
            names.add(sweep["name"])
    return spec


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_stage(preset: Path, stage: str, overrides: dict, runs: Path) -> tuple[Path, dict]:
    """`mae <stage>` with `overrides` in runs/<stage>/<run id>; its metrics.json (run once)."""
    items = [f"{k}={_yaml_scalar(v)}" for k, v in overrides.items()]
    cfg = load_config(preset, items)
    out = runs / stage / identity(cfg, stage)
    metrics = read_metrics(out)
    if metrics is None:
        command = [str(Path(sys.executable).parent / "mae"), stage, "--config", str(preset), "--out", str(out), *items]
        print(f"tune: {shlex.join(command)}\n      (progress: {out / TRAIN_LOG})", flush=True)
        # on a terminal the run's own progress bar; elsewhere its log lines stay in train.log only
        subprocess.run(command, check=True, stdout=None if sys.stdout.isatty() else subprocess.DEVNULL)
        metrics = read_metrics(out)
    return out, metrics


def _yaml_scalar(value) -> str:
    return "null" if value is None else str(value)


def run_sweep(spec: dict, sweep: dict, preset: Path, runs: Path, winners: dict) -> list[dict]:
    rows = []
    for seed in spec.get("seeds", [0]):
        for value in sweep["values"]:
            overrides = {**spec.get("base", {}), **(sweep.get("set") or {}), "run.seed": seed}
            for key, source in (sweep.get("best_of") or {}).items():
                overrides[key] = winners[source]
            overrides[sweep["vary"]] = value
            chain_s = 0.0
            pretrained = None
            for stage in sweep["stages"]:
                stage_overrides = dict(overrides)
                if stage != "pretrain" and pretrained is not None:
                    stage_overrides[f"{stage}.checkpoint"] = str(pretrained / "model.pth")
                out, metrics = run_stage(preset, stage, stage_overrides, runs)
                chain_s += float(metrics.get("train_time_s", 0.0)) + float(metrics.get("knn_time_s", 0.0))
                rows.append({"sweep": sweep["name"], "key": sweep["vary"], "value": _value_text(value), "seed": seed,
                             "stage": stage, "val_top1": metrics.get("top1"), "knn_top1": metrics.get("knn_top1"),
                             "train_time_s": round(float(metrics.get("train_time_s", 0.0)), 1),
                             "chain_time_s": round(chain_s, 1), "run_dir": str(out.relative_to(REPO_ROOT))
                             if out.is_relative_to(REPO_ROOT) else str(out)})
                if stage == "pretrain":
                    pretrained = out
    return rows


def winner(rows: pd.DataFrame, sweep: dict):
    """The value with the best mean validation top-1 of the sweep's last stage (ties: the earlier value)."""
    last = rows[(rows.sweep == sweep["name"]) & (rows.stage == sweep["stages"][-1])]
    means = last.groupby("value", sort=False).val_top1.mean()
    best = means.idxmax()
    return next(v for v in sweep["values"] if _value_text(v) == best)


def report(spec: dict, rows: pd.DataFrame) -> str:
    lines = ["# Tuning sweeps (validation split; generated by scripts/tune.py, do not edit)", "",
             f"Each run trains on the training images minus {spec['base']['data.val_split']:,} held out and is "
             "scored on those held-out images (top-1 %); the test set is not read. The winner (**bold**) is "
             "the best mean of the sweep's last stage. Time: training seconds of the whole chain "
             "(pretraining + k-NN + fine-tuning / probe) on one thread, as measured: a machine shared with "
             "other work gives longer times, so they say what a sweep cost, not the preset's speed.", ""]
    for sweep in spec["sweeps"]:
        part = rows[rows.sweep == sweep["name"]]
        if part.empty:
            continue
        stages = [s for s in sweep["stages"] if s in set(part.stage)]
        table = part.pivot_table(index="value", columns="stage", values="val_top1", aggfunc="mean", sort=False)
        knn = part[part.stage == "pretrain"].groupby("value", sort=False).knn_top1.mean()
        chain = part.groupby("value", sort=False).chain_time_s.max()
        seeds = part.groupby("value", sort=False).seed.nunique()
        best = (_value_text(winner(rows, sweep)) if set(sweep["stages"]) <= set(part.stage) and not sweep.get("curve")
                else None)
        fixed = {**(sweep.get("set") or {})}
        lines += [f"## {sweep['name']}: {sweep['vary']}", "",
                  "stages " + " → ".join(sweep["stages"]) + "; set " +
                  (", ".join(f"`{k}={_yaml_scalar(v)}`" for k, v in fixed.items()) or "nothing") +
                  ("; " + ", ".join(f"`{k}` from {s}" for k, s in sweep["best_of"].items()) if sweep.get("best_of") else ""),
                  ""]
        header = [sweep["vary"], "seeds"] + [f"{s} val top-1" for s in stages if s != "pretrain"]
        header += ["k-NN val top-1"] if "pretrain" in stages else []
        header += ["chain time (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for value in table.index:
            mark = "**" if value == best else ""
            cells = [f"{mark}{value}{mark}", str(seeds[value])]
            cells += [f"{mark}{table.loc[value, s]:.2f}{mark}" for s in stages if s != "pretrain"]
            cells += [f"{knn[value]:.2f}" if value in knn.index and pd.notna(knn[value]) else "–"] if "pretrain" in stages else []
            cells += [f"{chain[value]:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _store(csv: Path, name: str, new: pd.DataFrame) -> pd.DataFrame:
    """Replace sweep `name`'s rows of tuning.csv with `new`, under a lock: sweeps may run side by side."""
    with open(csv.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = pd.read_csv(csv, dtype={"value": str}) if csv.exists() else pd.DataFrame(columns=new.columns)
        rows = pd.concat([rows[rows.sweep != name], new], ignore_index=True)
        rows.to_csv(csv, index=False)
    return rows


def read_rows(csv: Path) -> pd.DataFrame:
    """The rows of tuning.csv (empty when there is none yet); a UserError when the file is not one."""
    if not csv.exists():
        return pd.DataFrame()
    try:
        rows = pd.read_csv(csv, dtype={"value": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, IsADirectoryError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise UserError.message("--out", f"{csv} cannot be read as CSV ({reason}): allowed a tuning.csv written "
                                "by scripts/tune.py") from None
    missing = [column for column in TUNING_COLUMNS if column not in rows.columns]
    if missing:
        raise UserError.message("--out", f"{csv} has no column {missing[0]!r}: allowed a tuning.csv written by "
                                "scripts/tune.py")
    return rows


def finished_winners(spec: dict, rows: pd.DataFrame, skipped: set[str]) -> dict:
    """{sweep: its winner} of the `skipped` sweeps (not run now) that tuning.csv holds every stage of."""
    winners = {}
    for sweep in spec["sweeps"]:
        if (sweep["name"] in skipped and not sweep.get("curve") and not rows.empty
                and set(sweep["stages"]) <= set(rows[rows.sweep == sweep["name"]].stage)):
            winners[sweep["name"]] = winner(rows, sweep)
    return winners


def check_best_of_sources(spec: dict, selected: list[str], winners: dict, csv: Path, rerun: list[str]) -> None:
    """A UserError, before anything runs, for a selected sweep whose `best_of` sweep is neither selected too
    nor finished in tuning.csv: its value would be unknown. `rerun` is the command line to suggest."""
    for sweep in spec["sweeps"]:
        if sweep["name"] not in selected:
            continue
        unknown = {key: source for key, source in (sweep.get("best_of") or {}).items()
                   if source not in selected and source not in winners}
        if unknown:
            sources = list(dict.fromkeys(unknown.values()))
            first = shlex.join([*rerun, *(part for source in sources for part in ("--sweep", source))])
            takes = " and ".join(f"{key} from the winner of sweep {source!r}" for key, source in unknown.items())
            has, it = ("has", "it") if len(sources) == 1 else ("have", "them")
            raise UserError.message("--sweep", f"sweep {sweep['name']!r} takes {takes}, which {has} no finished runs "
                                    f"in {csv} yet: run {it} first, `{first}`, or together, "
                                    f"`{first} --sweep {shlex.quote(sweep['name'])}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 done, 1 a run failed, 2 a user mistake")
    parser.add_argument("spec", type=Path, help="sweep file, e.g. workflow/tuning/tiny.yaml")
    parser.add_argument("--sweep", action="append", default=[], help="run only these sweeps (default: all)")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "tuning",
                        help="folder of the run folders, one per run id (default runs/tuning)")
    parser.add_argument("--out", type=Path, help="folder of tuning.csv / tuning.md (default results/<preset>/tuning)")
    parser.add_argument("--report-only", action="store_true", help="rewrite tuning.md from tuning.csv")
    args = parser.parse_args(argv)
    # the command line that runs sweeps into the same --out / --runs, for the messages that suggest one
    rerun = ["scripts/tune.py", str(args.spec)]
    rerun += ["--runs", str(args.runs)] if args.runs != parser.get_default("runs") else []
    rerun += ["--out", str(args.out)] if args.out else []
    try:
        # every argument is checked before anything is created or run
        spec = load_spec(args.spec)
        preset = REPO_ROOT / spec["preset"]
        out_dir = args.out or REPO_ROOT / "results" / preset.stem / "tuning"
        csv = out_dir / "tuning.csv"
        names = [s["name"] for s in spec["sweeps"]]
        for name in args.sweep:
            if name not in names:
                raise UserError("--sweep", name, f"one of {names}")
        if args.report_only and not csv.exists():
            raise UserError.message("--out", f"there is no tuning.csv in {out_dir} yet: --report-only rewrites "
                                    f"tuning.md from it; run the sweeps first, `{shlex.join(rerun)}`")
        rows = read_rows(csv)
        if not args.report_only:
            selected = args.sweep or names
            winners = finished_winners(spec, rows, set(names) - set(selected))
            check_best_of_sources(spec, selected, winners, csv, rerun)
            out_dir.mkdir(parents=True, exist_ok=True)
            for sweep in spec["sweeps"]:
                if sweep["name"] not in selected:
                    continue
                new = pd.DataFrame(run_sweep(spec, sweep, preset, args.runs, winners))
                rows = _store(csv, sweep["name"], new)
                if not sweep.get("curve"):
                    winners[sweep["name"]] = winner(rows, sweep)
                    print(f"tune: {sweep['name']}: best {sweep['vary']} = {winners[sweep['name']]}", flush=True)
        (out_dir / "tuning.md").write_text(report(spec, rows))
        print(f"tune: wrote {csv} and tuning.md")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out is a file, a read-only or full disk: the user's to fix
        error = user_error_from_os(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: {shlex.join(exc.cmd)} exited {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
