"""Write one value from the rule's params to its output: YAML for .yaml, JSON for .json.

Rules render_config (a run's `mae` config, params.data = the config dict) and write_manifest
(params.data = the manifest list), workflow/rules/grid.smk. A script rather than `run:`, because
Snakemake re-parses the whole workflow in a subprocess for every `run:` job.
"""

from pathlib import Path

import yaml


def write(path: str, data) -> None:
    if path.endswith(".json"):
        from workflow.results.runs import write_manifest
        write_manifest(path, data)
    else:
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


if "snakemake" in globals():
    write(snakemake.output[0], snakemake.params.data)  # noqa: F821
