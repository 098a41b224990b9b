#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest "$@"
