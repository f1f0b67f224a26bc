"""The SLURM profile is site-neutral, and site settings cannot cost a job its time-limit signal.

- The repository's profile (slurm/config.v8+.yaml) names no partition, account or qos.
- With a site's values applied (the README's way: a profile of the site's own after `--profile slurm`,
  found by name in ~/.config/snakemake; or `--default-resources` on the command line, as the README said
  before), a dry run's pretrain job still carries `--signal=USR1@N --requeue` and the site's values.
- The local cluster enforces accounts as sites do: plain `sbatch` with an unknown account, or by a user
  without an association, is refused. (A real workflow run with site values through this cluster:
  test_slurm_chain.py.)
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from integration_support import REPO_ROOT, VENV_BIN, service_env

sys.path.insert(0, str(REPO_ROOT / "tests"))
from test_reliability_common import workflow_copy  # noqa: E402

SIGNAL = f"--signal=USR1@{yaml.safe_load((REPO_ROOT / 'workflow/config.yaml').read_text())['slurm_signal_before_s']} --requeue"
SITE_PROFILE = {"default-resources": {"slurm_partition": "gpu", "slurm_account": "myproject", "qos": "normal",
                                      "slurm_extra": "'--mail-type=END'"}}


def test_repository_profile_names_no_site_value():
    profile = yaml.safe_load((REPO_ROOT / "slurm" / "config.v8+.yaml").read_text())
    site_keys = {"slurm_partition", "slurm_account", "qos", "constraint", "gres", "partition", "account"}
    flat = yaml.safe_dump(profile)
    assert not [k for k in site_keys if re.search(rf"\b{k}\b", flat)], profile
    assert profile["executor"] == "slurm"
    assert "default-resources" not in profile, "a site's default-resources would replace this list"


def pretrain_resources(output: str) -> list[str]:
    """The `resources:` lines of the pretrain jobs in a dry run's output."""
    blocks = re.findall(r"^rule pretrain:\n(.*?)(?:\n\n|\Z)", output, flags=re.S | re.M)
    return [m for b in blocks for m in re.findall(r"^\s+resources: (.*)$", b, flags=re.M)]


SITES = {
    "site profile by name": lambda home: ["--profile", "slurm", "--profile", "mysite"],
    "--default-resources": lambda home: ["--profile", "slurm", "--default-resources", "slurm_partition=gpu",
                                         "slurm_account=myproject", "qos=normal", "slurm_extra='--mail-type=END'"],
}


@pytest.mark.parametrize("site", list(SITES))
def test_site_settings_keep_the_time_limit_signal(site, tmp_path):
    work = workflow_copy(tmp_path / "wf")
    config_home = tmp_path / "config"  # platformdirs: the user's ~/.config/snakemake
    (config_home / "snakemake" / "mysite").mkdir(parents=True)
    (config_home / "snakemake" / "mysite" / "config.v8+.yaml").write_text(yaml.safe_dump(SITE_PROFILE))
    cmd = [str(VENV_BIN / "snakemake"), *SITES[site](config_home), "-n", "--config", "preset=paper", "data_root=/datasets/imagenet",
           "ablations=[table1c_mask_token]", "--until", "pretrain"]
    proc = subprocess.run(cmd, cwd=work, env=service_env(XDG_CONFIG_HOME=str(config_home)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if site.startswith("site profile"):
        assert "Using profiles slurm and mysite" in proc.stderr, proc.stderr[:500]
    lines = pretrain_resources(proc.stdout + proc.stderr)
    assert len(lines) == 2, proc.stdout[-3000:]
    for line in lines:
        assert f"slurm_extra={SIGNAL}," in line, line                     # the rule's own, not the site's
        assert "slurm_partition=gpu" in line and "slurm_account=myproject" in line and "qos=normal" in line, line
        assert "nodes=8" in line and "gres=gpu:8" in line and "runtime=2880" in line, line  # workflow/config.yaml (paper)


def test_cluster_refuses_jobs_without_a_valid_account(slurm_cluster, tmp_path):
    """AccountingStorageEnforce=associations: sbatch refuses an unknown account, and a user without an
    association; the user's own accounts (general by default, mae by name) are accepted."""
    def sbatch(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["sbatch", "--parsable", "-p", "batch", "-D", "/tmp", "-o", "/dev/null", *args, "--wrap", "true"]
        if user:
            cmd = ["runuser", "-u", user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, env=slurm_cluster.env, timeout=60)

    unknown = sbatch("-A", "nosuchaccount")
    assert unknown.returncode != 0 and "Invalid account" in unknown.stderr, unknown
    stranger = sbatch(user="nobody")
    assert stranger.returncode != 0 and "Invalid account" in stranger.stderr, stranger
    jobs = {acct: sbatch(*(["-A", acct] if acct else [])) for acct in ("mae", None)}
    assert all(p.returncode == 0 for p in jobs.values()), jobs
    accounts = set()
    for p in jobs.values():  # slurmctld's record (sacct gets it from slurmdbd a little later)
        job = subprocess.run(["scontrol", "-o", "show", "job", p.stdout.strip().split(";")[0]], capture_output=True,
                             text=True, env=slurm_cluster.env, timeout=60, check=True).stdout
        accounts.add(re.search(r"\bAccount=(\S+)", job)[1])
    assert accounts == {"mae", "general"}, accounts
