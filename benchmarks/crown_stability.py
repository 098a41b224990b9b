"""Do the same ground's crowns come back where they were? The bundled model on one real-forest scene.

The scene: 64 NEON plots (TEAK, SJER, OSBS; 400 px at 0.1 m each) laid 8 x 8 into one 3200 px
raster georeferenced on the first TEAK plot (EPSG:32611, 37 N). Each variant is made by GDAL
the way users' files come: the same pixels cropped by 2, 4 or 8 px at the top left (the pixel
grid falls elsewhere on the ground), the same raster recompressed as JPEG at quality 75, warped
to Web Mercator (bilinear), and from there back to UTM at 0.1 m. For each, the share of the
reference's crowns with a crown centroid within 1 m (crowns within 3 m of the variant's edge
not counted), under tile plan 2 (tiles start where the image starts) and plan 3 (tiles start on
a lattice fixed in the CRS; true ground scale; image mirrored beyond valid pixels).

    .venv/bin/python benchmarks/crown_stability.py [WORK_DIR]

Prints one table; the figures in docs/RELIABILITY.md come from it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PLOTS = ROOT.parent / "shared" / "data" / "neon_2018_plots" / "images"


def make_scene(path: Path, side: int = 8) -> Path:
    """The scene of ``side`` x ``side`` plots, north-up at 0.1 m on the first TEAK plot's origin."""
    import rasterio
    from rasterio.transform import Affine

    plots = []
    for site in ("TEAK_TEAK", "SJER_SJER", "OSBS_OSBS"):
        for plot in sorted(PLOTS.glob(f"{site}_*.tif")):
            with rasterio.open(plot) as src:
                if src.shape == (400, 400):
                    plots.append(plot)
    size = 400 * side
    scene = np.zeros((3, size, size), np.uint8)
    for k, plot in enumerate(plots[: side * side]):
        with rasterio.open(plot) as src:
            scene[:, 400 * (k // side): 400 * (k // side + 1), 400 * (k % side): 400 * (k % side + 1)] = src.read()[:3]
            if k == 0:
                crs, origin = src.crs, (src.transform.c, src.transform.f)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=Affine(0.1, 0, origin[0], 0, -0.1, origin[1]), tiled=True) as dst:
        dst.write(scene)
    return path


def gdal(*args: str) -> None:
    from osgeo import gdal as _gdal

    _gdal.UseExceptions()
    tool, rest = args[0], list(args[1:])
    if tool == "translate":
        _gdal.Translate(rest[-1], rest[-2], options=rest[:-2])
    else:
        _gdal.Warp(rest[-1], rest[-2], options=rest[:-2])


def variants(scene: Path, folder: Path) -> dict[str, Path]:
    import rasterio

    with rasterio.open(scene) as src:
        size = src.width
    out = {}
    for k in (2, 4, 8):
        out[f"shift {k} px"] = path = folder / f"shift{k}.tif"
        gdal("translate", "-srcwin", str(k), str(k), str(size - k), str(size - k), str(scene), str(path))
    out["JPEG q75"] = folder / "jpeg75.tif"
    gdal("translate", "-co", "COMPRESS=JPEG", "-co", "JPEG_QUALITY=75", "-co", "TILED=YES", str(scene),
         str(out["JPEG q75"]))
    out["Web Mercator"] = folder / "mercator.tif"
    gdal("warp", "-t_srs", "EPSG:3857", "-r", "bilinear", str(scene), str(out["Web Mercator"]))
    out["to 3857 and back"] = folder / "roundtrip.tif"
    gdal("warp", "-t_srs", "EPSG:32611", "-tr", "0.1", "0.1", "-r", "bilinear", str(out["Web Mercator"]),
         str(out["to 3857 and back"]))
    return out


def crowns(cache: Path, to_crs) -> tuple[np.ndarray, float]:
    """Crown centroids in ``to_crs`` and the summed crown area (m²)."""
    from osgeo import ogr, osr

    ds = ogr.Open(str(cache / "crowns.shp"))
    layer = ds.GetLayer(0)
    src = layer.GetSpatialRef()
    dst = osr.SpatialReference()
    dst.SetFromUserInput(to_crs)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ct = osr.CoordinateTransformation(src, dst)
    points, area = [], 0.0
    for feature in layer:
        c = feature.GetGeometryRef().Centroid()
        x, y, _ = ct.TransformPoint(c.GetX(), c.GetY())
        points.append((x, y))
        area += feature.GetField("area_m2")
    return np.array(points).reshape(-1, 2), area


def within_1m(reference: np.ndarray, other: np.ndarray, bounds: tuple[float, float, float, float]) -> float:
    """Percentage of the reference crowns inside ``bounds`` shrunk by 3 m that have a crown in ``other`` within 1 m."""
    x0, y0, x1, y1 = bounds
    inside = ((reference[:, 0] > x0 + 3) & (reference[:, 0] < x1 - 3) & (reference[:, 1] > y0 + 3)
              & (reference[:, 1] < y1 - 3))
    ref = reference[inside]
    if len(ref) == 0 or len(other) == 0:
        return 0.0
    d = np.hypot(ref[:, None, 0] - other[None, :, 0], ref[:, None, 1] - other[None, :, 1]).min(axis=1)
    return 100.0 * float((d <= 1.0).mean())


def run(image: Path, cache: Path, plan: int):
    import engine.run.predict as run_predict
    from engine import Job, predict

    saved = run_predict.LATEST_PLAN
    run_predict.LATEST_PLAN = plan
    try:
        start = time.perf_counter()
        result = predict(Job(image=image, cache_dir=cache))
        return result, time.perf_counter() - start
    finally:
        run_predict.LATEST_PLAN = saved


def main(work: Path) -> None:
    import rasterio
    from rasterio.warp import transform_bounds

    from engine.tiling.grid import PLAN_EDGE, PLAN_GROUND

    work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(work / "scene.tif")
    files = variants(scene, work)
    with rasterio.open(scene) as src:
        crs = src.crs.to_string()
    print(f"{'variant':<20} {'plan':>4} {'tiles':>5} {'crowns':>6} {'area m2':>8} {'within 1 m':>10} {'s':>6}")
    for plan in (PLAN_EDGE, PLAN_GROUND):
        result, took = run(scene, work / f"ref_p{plan}", plan)
        reference, ref_area = crowns(work / f"ref_p{plan}", crs)
        print(f"{'reference':<20} {plan:>4} {result.total:>5} {len(reference):>6} {ref_area:>8.0f} {'':>10} "
              f"{took:>6.1f}")
        for name, path in files.items():
            cache = work / f"{path.stem}_p{plan}"
            result, took = run(path, cache, plan)
            found, area = crowns(cache, crs)
            with rasterio.open(path) as src:
                bounds = transform_bounds(src.crs, crs, *src.bounds)
            print(f"{name:<20} {plan:>4} {result.total:>5} {len(found):>6} {area:>8.0f} "
                  f"{within_1m(reference, found, bounds):>9.1f}% {took:>6.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="tcd_stability_")))
