"""Helpers that write small real GeoTIFFs and read caches back, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from osgeo import ogr
from rasterio.transform import Affine


def write_raster(path, data: np.ndarray, *, crs="EPSG:32633", transform=None, gsd_m=0.1, origin=(500000.0, 6000000.0),
                 nodata=None, **extra) -> Path:
    """Write (bands, rows, cols) ``data`` as a GeoTIFF; north-up at ``gsd_m`` unless ``transform`` is given."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    if transform is None:
        transform = Affine(gsd_m, 0, origin[0], 0, -gsd_m, origin[1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, crs=crs, transform=transform, nodata=nodata)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def squares_image(width: int, height: int, squares, value=230, background=20, bands=3) -> np.ndarray:
    """uint8 image with bright squares; ``squares`` are (col, row, size) in pixels."""
    img = np.full((bands, height, width), background, np.uint8)
    for col, row, size in squares:
        img[:, row : row + size, col : col + size] = value
    return img


def crowns_image(width: int, height: int, squares, value=230, background=20, dot=3) -> np.ndarray:
    """Input for tests.onnx_models.canopy_centres_model: band 1 canopy squares, band 2 a centre dot in each.

    The dot is ``dot`` pixels wide so it survives resampling.
    """
    img = squares_image(width, height, squares, value, background)
    img[1] = 0
    for col, row, size in squares:
        r, c = row + size // 2 - dot // 2, col + size // 2 - dot // 2
        img[1, r : r + dot, c : c + dot] = 255
    return img


def read_confidence(cache_dir) -> np.ndarray:
    with rasterio.open(Path(cache_dir) / "confidence.vrt") as src:
        return src.read()


def read_crowns(cache_dir, name="crowns.shp") -> list[dict]:
    """All crowns with all their attributes and WKT geometry, in file order."""
    ds = ogr.Open(str(Path(cache_dir) / name))
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    columns = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    rows = []
    for feat in layer:
        row = {k: feat.GetField(k) for k in columns}
        row["wkt"] = feat.GetGeometryRef().ExportToWkt()
        c = feat.GetGeometryRef().Centroid()
        row["centroid"] = (c.GetX(), c.GetY())
        rows.append(row)
    return rows


def snapshot(cache_dir, vector: str = "crowns.shp"):
    """What two caches must agree on: manifest tile lines, crowns (attributes and geometry), confidence."""
    lines = (Path(cache_dir) / "tiles.jsonl").read_text().splitlines()[1:]
    crowns = [{k: v for k, v in c.items() if k != "centroid"} for c in read_crowns(cache_dir, vector)]
    return lines, crowns, read_confidence(cache_dir)


def assert_same_cache(a, b) -> None:
    """Compare two :func:`snapshot` results exactly."""
    assert a[0] == b[0]
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
