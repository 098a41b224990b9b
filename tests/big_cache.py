"""Synthetic confidence caches written directly, without a model: for tests and benchmarks of big caches.

:func:`write_synthetic_cache` lays out ``cols`` × ``rows`` tiles of ``core_px``
square cores (cut short at the right and bottom edges when the image size is
given) and writes what a run with semantic output only would leave before its
mosaic: one small confidence GeoTIFF per tile under ``semantic/`` and the
manifest ``tiles.jsonl`` (a header, then one committed line per tile). A tile's
pixels are one of 256 patterns (a level that varies smoothly across the image,
with a disc in the middle of each tile), each encoded once and written as bytes,
so a million tiles take a minute or two. Building the mosaic is then the
engine's own work: ``GeotiffSemanticCache(...).open(records)`` finds no mosaic
and builds it, overviews included, from the committed tiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.cache.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, TileRecord
from engine.cache.semantic import SEMANTIC_DIR, VRT_NAME, GeotiffSemanticCache

GSD_M = 0.1
ORIGIN = (500000.0, 6000000.0)
CLASSES = ("tree",)


def crs_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return srs.ExportToWkt()


def transform() -> tuple:
    return (GSD_M, 0.0, ORIGIN[0], 0.0, -GSD_M, ORIGIN[1])


def _encode(value: int, w: int, h: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
    data = np.where(disc, 255 - value, value).astype(np.uint8)
    name = f"/vsimem/synthetic_{value}_{w}_{h}.tif"
    mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    mem.GetRasterBand(1).WriteArray(data)
    options = ["COMPRESS=DEFLATE", "ZLEVEL=1", "PREDICTOR=2"]
    if w >= 256 and h >= 256:
        options += ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]
    gdal.GetDriverByName("GTiff").CreateCopy(name, mem, options=options)
    f = gdal.VSIFOpenL(name, "rb")
    data = gdal.VSIFReadL(1, gdal.VSIStatL(name).size, f)
    gdal.VSIFCloseL(f)
    gdal.Unlink(name)
    return data


def tile_value(col: int, row: int) -> int:
    """The confidence level of tile (col, row): smooth waves across the image."""
    return int(128 + 100 * math.sin(col / 9.0) * math.cos(row / 7.0))


def write_synthetic_cache(cache_dir: Path, cols: int, rows: int, core_px: int, *, width: int | None = None,
                          height: int | None = None) -> tuple[list[TileRecord], int, int]:
    """Write the tiles and manifest of a ``cols`` × ``rows`` cache; returns its records and image size."""
    cache_dir = Path(cache_dir)
    (cache_dir / SEMANTIC_DIR).mkdir(parents=True, exist_ok=True)
    width = width or cols * core_px
    height = height or rows * core_px
    encoded: dict[tuple[int, int, int], bytes] = {}
    records = []
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "image": "synthetic", "classes": list(CLASSES),
              "suffix": "", "outputs": ["semantic"], "tiles_total": cols * rows, "vector_file": None,
              "semantic_mosaic": VRT_NAME, "model": {"name": "synthetic"}}
    with open(cache_dir / MANIFEST_NAME, "w") as manifest:
        manifest.write(json.dumps(header) + "\n")
        for row in range(rows):
            for col in range(cols):
                x0, y0 = col * core_px, row * core_px
                x1, y1 = min(x0 + core_px, width), min(y0 + core_px, height)
                key = (tile_value(col, row), x1 - x0, y1 - y0)
                if key not in encoded:
                    encoded[key] = _encode(*key)
                tile_id = len(records) + 1
                rel = GeotiffSemanticCache.tile_name(tile_id)
                (cache_dir / rel).write_bytes(encoded[key])
                record = TileRecord(tile_id, (x0, y0, x1, y1), "done", {"semantic": rel}, 0, 0)
                manifest.write(json.dumps(record.to_json()) + "\n")
                records.append(record)
    return records, width, height


def semantic_cache(cache_dir: Path, width: int, height: int) -> GeotiffSemanticCache:
    return GeotiffSemanticCache(cache_dir, width, height, crs_wkt(), transform(), CLASSES)
