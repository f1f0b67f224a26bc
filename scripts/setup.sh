#!/usr/bin/env bash
# Install what the harness needs on a Debian 12 machine, idempotently:
#   scripts/setup.sh main   system data set (Fashion-MNIST) + .venv with the project
#   scripts/setup.sh test   the above + SLURM, munge, MariaDB, Chromium for the integration tests
# System packages are installed when running as root (or with sudo); the Python side lives in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-main}

# .venv lives here, and Snakemake runs its script: rules as `<python path> <script>` without quoting the
# interpreter (snakemake/snakemake#2645), so the workflow cannot run from a path with whitespace: say so
# now, before minutes of installing.
case "$PWD" in
  *[[:space:]]*)
    echo "error: repository path='$PWD' is invalid: allowed a path without whitespace (.venv goes there, and" \
         "Snakemake cannot run script rules from such an environment: snakemake/snakemake#2645)" >&2
    exit 2 ;;
esac

apt_pkgs=(dataset-fashion-mnist)
if [ "$what" = test ]; then
  apt_pkgs+=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server chromium chromium-driver)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null; then
    echo "setup: please install these Debian packages as root: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages: on x86_64 from requirements.lock (every package pinned, torch included; regenerate it
# with scripts/lock.sh). Elsewhere (aarch64 gets a CPU build of torch) or with TORCH_SPEC set, from
# pyproject.toml's ranges, unlocked.
case "$(uname -m)" in
  aarch64) default_torch="torch==2.9.1 torchvision==0.24.1" ;;
  *)       default_torch="" ;;
esac
torch_spec=${TORCH_SPEC:-$default_torch}

python=${PYTHON:-python3}
UV_VERSION=0.13.9  # the installer (below); pinned like everything else
stamp=".venv/.installed-$(cat pyproject.toml requirements.lock scripts/setup.sh | sha1sum | cut -c1-12)-$what"
# A `test` install includes everything `main` needs.
if [ ! -f "$stamp" ] && ! { [ "$what" = main ] && [ -f "${stamp%-main}-test" ]; }; then
  # A new .venv checks for room first, rather than pip failing halfway with "No space left on device":
  # the locked install (torch with its CUDA libraries) fills 6.5 GiB, and pip unpacks beside it.
  if [ ! -d .venv ] && [ -z "$torch_spec" ]; then
    need_gib=${MAE_SETUP_MIN_FREE_GIB:-8}
    read -r free_kib mount < <(df -Pk . | awk 'NR == 2 {print $4, $6}')
    if [ "$free_kib" -lt $(( need_gib * 1024 * 1024 )) ]; then
      echo "setup: a new .venv needs about $need_gib GiB free on $mount," \
           "$(( free_kib / 1024 / 1024 )) GiB are: free some space and run again" \
           "(MAE_SETUP_MIN_FREE_GIB=N changes the amount checked)" >&2
      exit 1
    fi
  fi
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  echo "setup: installing Python packages into .venv (first time: a minute or two)"
  # uv installs the locked packages in parallel: setup.sh in a fresh clone took 79 s where pip took about
  # 220 s (2-core VM, 2026-12-03). --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, no
  # process would ever write the .pyc files, and every one would compile its imports again (mlflow's server
  # 13 s instead of 6 to import; the test suite ran twice as long). Its cache sits inside .venv, on the same
  # disk, so the installed files are hard links to it and cost no extra room; it is removed afterwards.
  # Where uv cannot be installed or fails, pip does it.
  pip=(.venv/bin/pip install -q --disable-pip-version-check)
  use_uv=0
  "${pip[@]}" "uv==$UV_VERSION" >/dev/null 2>&1 && use_uv=1
  install() {
    if [ "$use_uv" = 1 ]; then
      UV_CACHE_DIR="$PWD/.venv/.uv-cache" .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "$@" && return 0
      echo "setup: uv could not install $*; trying pip" >&2
    fi
    "${pip[@]}" "$@"
  }
  if [ -z "$torch_spec" ]; then
    install -r requirements.lock          # the test tools are in the lock too
    install --no-deps -e .
    stamp="${stamp%-$what}-test"
  else
    extras=""; [ "$what" = test ] && extras="[test]"
    # shellcheck disable=SC2086
    install $torch_spec
    install -e ".$extras"
  fi
  rm -rf .venv/.uv-cache
  rm -f .venv/.installed-*; touch "$stamp"
fi
