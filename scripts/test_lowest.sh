#!/usr/bin/env bash
# Run the engine's tests against the lowest versions requirements.txt allows
# (requirements-lowest.txt), in a throwaway venv beside the dev one: the plugin installs
# whatever its users' registries serve within those bounds, so both ends are tested (the
# upper end is what requirements-dev.lock pins). Needs scripts/install.sh to have run.
#
#   bash scripts/test_lowest.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(mktemp -d /var/tmp/tcd-lowest.XXXXXX)"
trap 'rm -rf "$VENV"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$VENV"
# numpy as locked (Debian's GDAL needs numpy 1 on Python 3.11); scipy is Debian's own (1.10).
numpy=$(grep -E '^numpy==' requirements-dev.lock | cut -d' ' -f1)
test_packages=$(grep -E '^(pytest|pytest-qgis|pytest-timeout|onnx|ml-dtypes|protobuf|pluggy|iniconfig|packaging)==' \
    requirements-dev.lock | cut -d' ' -f1)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-lowest.txt "$numpy" $test_packages
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(onnxruntime|rasterio|shapely|jsonlines|tqdm|affine|numpy|scipy) '
export QT_QPA_PLATFORM=offscreen
"$VENV/bin/python" -m pytest -p no:cacheprovider tests/test_engine_*.py tests/test_crown*.py \
    tests/test_rasters_*.py tests/test_detectors.py tests/test_cli_process.py tests/test_default_model.py \
    tests/test_reliability.py tests/test_graph_tail.py tests/test_ogr_memory.py "$@"
