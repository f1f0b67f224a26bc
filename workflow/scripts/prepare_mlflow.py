"""Create the embedded MLflow store and the experiments once, before training jobs run in parallel.

The store is opened through `mae.tracking.open_store`, the same route every `mae` job takes: under a
lock next to the sqlite file, so a job started by hand at the same moment cannot race the schema
migration either, and experiments get the same artifact location (next to the database) as when a
job creates them. A tracking server (http://...) needs nothing: it is skipped.

Snakemake rule prepare_mlflow (workflow/rules/grid.smk): params uri, experiments; output a marker.
By hand: python workflow/scripts/prepare_mlflow.py sqlite:////abs/path/mlflow.db mae-tiny
"""


import logging
import sys
from pathlib import Path

log = logging.getLogger("prepare_mlflow")


def prepare(uri: str, experiments: list[str]) -> str:
    """Create the sqlite store at `uri` with its tables and `experiments`; return what was done."""
    if not experiments:
        return "tracking disabled in every run: nothing to prepare"
    if not uri.startswith("sqlite:"):
        return f"{uri} is not an embedded sqlite store: nothing to prepare"
    from mae.tracking import open_store

    open_store(uri, experiments)
    return f"{uri} ready with experiments {', '.join(experiments)}"


if "snakemake" in globals():
    logging.basicConfig(filename=snakemake.log[0], level=logging.INFO,  # noqa: F821
                        format="%(asctime)s %(levelname)s %(message)s")
    done = prepare(snakemake.params.uri, list(snakemake.params.experiments))  # noqa: F821
    log.info(done)
    Path(snakemake.output[0]).write_text(done + "\n")  # noqa: F821
elif __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) < 2:
        sys.exit("usage: prepare_mlflow.py URI [EXPERIMENT ...]")
    print(prepare(sys.argv[1], sys.argv[2:]))
