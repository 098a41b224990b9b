#!/usr/bin/env bash
# Install everything needed to run and test TCD for QGIS on Debian 12 (run as root):
# QGIS 3.22 LTR and friends from Debian's packages, then a development venv made from
# the system Python with --system-site-packages (so QGIS's bindings stay visible).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="qgis python3-qgis python3-venv python3-pip xvfb xauth"
missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi

# The system interpreter by its full path: PATH may put another python3 (without QGIS) first.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt \
    $( [ -f requirements-export.txt ] && [ "${TCD_SKIP_EXPORT_EXTRA:-0}" != 1 ] && echo "-r requirements-export.txt" )
.venv/bin/python -c "import numpy, rasterio, onnxruntime, osgeo, qgis.core; assert numpy.__version__ < '2'"
echo "environment ready: $(pwd)/.venv"
