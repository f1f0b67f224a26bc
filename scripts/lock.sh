#!/usr/bin/env bash
# Regenerate requirements.lock (every package of the x86_64 Linux environment, pinned) from
# pyproject.toml with pip-tools, with the torch pair this project tests against (torch.in). scripts/setup.sh
# installs from the lock; commit the new lock together with the change that needed it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q pip-tools
"$work/venv/bin/pip-compile" -q --strip-extras --extra test --no-emit-index-url --no-emit-find-links \
  -o requirements.lock pyproject.toml torch.in
echo "lock: requirements.lock regenerated ($(grep -c '==' requirements.lock) pins)"
