#!/usr/bin/env bash
# Refresh requirements-dev.lock: the exact versions, with hashes, of every Python package the
# development and test environment installs (scripts/install.sh and CI install from the lock
# alone, so a fresh machine gets what CI tested). Edit the loose requirement files, then run
#   bash scripts/lock.sh [--upgrade]
# and commit the lock with the change that needed it. Resolved for the platform CI runs on:
# Debian 12 with QGIS 3.40 LTR from bookworm-backports, Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh --no-lock
.venv/bin/python -m pip install -q --disable-pip-version-check "pip-tools>=7.7,<8"
# pip-compile writes what it was given into the lock's header: keep it a relative, stable command.
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv/bin/python -m piptools compile -q \
    --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
    --output-file requirements-dev.lock "$@" \
    requirements-dev.txt requirements-export.txt training/requirements.txt
echo "wrote requirements-dev.lock"
