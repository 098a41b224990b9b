#!/usr/bin/env bash
# Install everything needed to run and test TCD for QGIS on Debian 12 (run as root):
# QGIS 3.40 LTR from bookworm-backports and friends from Debian's packages, then a development
# venv made from the system Python with --system-site-packages (so QGIS's bindings stay
# visible), filled from requirements-dev.lock: exact versions with hashes, so a fresh machine
# gets what CI tested. Safe to run again: it only installs what is missing.
#
#   bash scripts/install.sh            # the locked environment (what CI uses)
#   bash scripts/install.sh --no-lock  # the loose requirement files instead (scripts/lock.sh uses it)
set -euo pipefail
cd "$(dirname "$0")/.."

use_lock=1
[ "${1:-}" = "--no-lock" ] && use_lock=0

export DEBIAN_FRONTEND=noninteractive
BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >"$BACKPORTS" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt-get update -q
fi

# QGIS and its Python bindings from backports (3.40 LTR); the rest from bookworm itself.
QGIS_PACKAGES="qgis python3-qgis qgis-providers"
OTHER_PACKAGES="python3-venv python3-pip xvfb xauth"
qgis_version() { dpkg-query -W -f='${Version}' python3-qgis 2>/dev/null || true; }
missing=""
for pkg in $OTHER_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
case "$(qgis_version)" in
    3.40.*) ;;
    *) apt-get update -q
       apt-get install -y -q --no-install-recommends -t bookworm-backports $QGIS_PACKAGES ;;
esac
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    apt-get install -y -q --no-install-recommends $missing
fi

# The system interpreter by its full path: PATH may put another python3 (without QGIS) first.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [ "$use_lock" = 1 ]; then
    # Hashes make pip refuse any other bytes than the ones locked.
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
        -r requirements-dev.lock
else
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -r requirements-dev.txt -r requirements-export.txt -r training/requirements.txt
fi
# GDAL's numpy bindings load only beside the numpy major version Debian built them with.
.venv/bin/python -c "import numpy, rasterio, onnxruntime, qgis.core; from osgeo import gdal_array"
echo "environment ready: $(pwd)/.venv (QGIS $(qgis_version))"
