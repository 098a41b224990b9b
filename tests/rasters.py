"""Helpers that write small real GeoTIFFs and read caches back, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from osgeo import ogr
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points


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


def speckled_image(n: int, seed: int, *, sizes=(8, 14), values=(150, 255), side: int = 300) -> np.ndarray:
    """uint8 ``side`` x ``side`` image of ``n`` random squares, sizes and brightness drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.full((3, side, side), 15, np.uint8)
    for _ in range(n):
        c, r, s = rng.integers(0, side - 12), rng.integers(0, side - 12), rng.integers(*sizes)
        img[:, r : r + s, c : c + s] = rng.integers(*values)
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


# Canopy height rasters for the crown squares of crowns_image on write_raster's default grid
# (EPSG:32633 from ORIGIN, 0.1 m pixels).
ORIGIN = (500000.0, 6000000.0)
LEADER_M = 20.0
CHM_NODATA = -9999.0


def square_m(col, row, size):
    """A crown square of the test image as (x0, y0, x1, y1) metres in EPSG:32633."""
    x0, y1 = ORIGIN[0] + col * 0.1, ORIGIN[1] - row * 0.1
    return x0, y1 - size * 0.1, x0 + size * 0.1, y1


def crown_height(i) -> float:
    return 5.0 + 0.5 * i


def geographic_chm(path, squares, *, nodata_crown: int, pixel_deg=(2.5e-6, 2e-6), covers_cols=6):
    """A CHM in EPSG:4326 with pixels of about 0.16 x 0.22 m, built from where each pixel's centre falls.

    Crown ``i``'s square, grown by 0.3 m (so the crown's outline never meets a pixel of another value),
    holds crown_height(i); the pixel whose centre is nearest the crown's centre holds LEADER_M; crown
    ``nodata_crown`` is nodata; elsewhere the ground is 0 m. The raster reaches only the first
    ``covers_cols`` columns of crowns (x < 500000 + 40 * covers_cols * 0.1 m).
    """
    (west, east), (north, south) = warp_points("EPSG:32633", "EPSG:4326", [ORIGIN[0] - 1, ORIGIN[0] + 4 * covers_cols],
                                               [ORIGIN[1] + 1, ORIGIN[1] - 33])
    dx, dy = pixel_deg
    width, height = int((east - west) / dx) + 1, int((north - south) / dy) + 1
    lon = west + (np.arange(width) + 0.5) * dx
    lat = north - (np.arange(height) + 0.5) * dy
    lon2, lat2 = np.meshgrid(lon, lat)
    x, y = (np.reshape(v, lon2.shape) for v in warp_points("EPSG:4326", "EPSG:32633", lon2.ravel(), lat2.ravel()))
    chm = np.zeros((height, width), np.float32)
    for i, square in enumerate(squares):
        x0, y0, x1, y1 = square_m(*square)
        inside = (x > x0 - 0.3) & (x < x1 + 0.3) & (y > y0 - 0.3) & (y < y1 + 0.3)
        chm[inside] = CHM_NODATA if i == nodata_crown else crown_height(i)
        if i != nodata_crown:
            centre = np.argmin((x - (x0 + x1) / 2) ** 2 + (y - (y0 + y1) / 2) ** 2)
            chm.flat[centre] = LEADER_M
    return write_raster(path, chm, crs="EPSG:4326", transform=Affine(dx, 0, west, 0, -dy, north), nodata=CHM_NODATA)


def crowns_by_square(path, squares, fields):
    """``{square index: {field: value}}`` of a crowns file, each crown matched to the square holding its centroid."""
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    found = {}
    for feature in layer:
        c = feature.GetGeometryRef().Centroid()
        for i, square in enumerate(squares):
            x0, y0, x1, y1 = square_m(*square)
            if x0 < c.GetX() < x1 and y0 < c.GetY() < y1:
                found[i] = {f: feature.GetField(f) if feature.IsFieldSetAndNotNull(f) else None for f in fields}
    return found


def read_overviews(cache_dir) -> list[np.ndarray]:
    """Every overview level of the confidence mosaic as GDAL reads it, largest first."""
    from osgeo import gdal

    ds = gdal.OpenEx(str(Path(cache_dir) / "confidence.vrt"), gdal.OF_RASTER | gdal.OF_READONLY)
    n = ds.GetRasterBand(1).GetOverviewCount()
    levels = [np.stack([ds.GetRasterBand(b).GetOverview(i).ReadAsArray() for b in range(1, ds.RasterCount + 1)])
              for i in range(n)]
    ds = None
    return levels


def overview_oracle(full: np.ndarray, cores, tile_px: int) -> list[np.ndarray]:
    """The overview levels the mosaic must hold, worked out from scratch from the full-resolution
    confidence ``full`` (bands, rows, cols) and the committed tiles' cores ``[x0, y0, x1, y1]``.

    Levels 1 and 2: a pixel's owner is the tile whose core holds its top-left source pixel;
    its value is the rounded mean of its 2 x 2 pixels of the level below that the same tile
    owns (0 where no committed tile owns it). Level k >= 3: the rounded mean of its 2 x 2
    pixels of level k - 1 that lie inside the raster. Levels go on until one fits in
    ``tile_px`` x ``tile_px``.
    """
    bands, height, width = full.shape
    owner = np.full((height, width), -1, np.int64)
    for i, (x0, y0, x1, y1) in enumerate(cores):
        owner[y0:y1, x0:x1] = i
    levels: list[np.ndarray] = []
    values = full.astype(np.int64)
    for _ in range(2):  # the levels whose pixels each belong to one tile
        if max(values.shape[1:]) <= tile_px:
            return levels
        top_left = owner[0::2, 0::2]
        total = np.zeros((bands, *top_left.shape), np.int64)
        count = np.zeros(top_left.shape, np.int64)
        for dy in (0, 1):
            for dx in (0, 1):
                part, part_owner = values[:, dy::2, dx::2], owner[dy::2, dx::2]
                h, w = part_owner.shape
                same = (part_owner == top_left[:h, :w]) & (top_left[:h, :w] >= 0)
                total[:, :h, :w] += part * same
                count[:h, :w] += same
        levels.append(((total + count // 2) // np.maximum(count, 1)).astype(np.uint8))
        values, owner = levels[-1].astype(np.int64), top_left
    while max(levels[-1].shape[1:]) > tile_px:
        prev = levels[-1].astype(np.int64)
        h, w = prev.shape[1:]
        total = np.zeros((bands, (h + 1) // 2, (w + 1) // 2), np.int64)
        count = np.zeros(total.shape[1:], np.int64)
        for dy in (0, 1):
            for dx in (0, 1):
                part = prev[:, dy::2, dx::2]
                total[:, : part.shape[1], : part.shape[2]] += part
                count[: part.shape[1], : part.shape[2]] += 1
        levels.append(((total + count // 2) // count).astype(np.uint8))
    return levels
