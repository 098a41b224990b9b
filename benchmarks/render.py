"""How fast QGIS draws a cache's layers, and how fast the mosaic opens, as caches grow (run on demand).

    .venv/bin/python -m benchmarks.render [--sizes 4096,16384,32768] [--million] [--workdir DIR]

For each raster size (16 MP, 268 MP and 1 GP by default: synthetic forest-like
RGB at 0.1 m from ``benchmarks/rasters.py``, bright discs of 1.5-4 m on dark
ground), the engine predicts it with a fast crown model made here
(:func:`disc_crowns_model`: canopy from the green band, centres from a pooled
canopy, the engine's watershed; 512 px tiles, 64 px overlap, both outputs,
Shapefile) into ``--workdir`` (kept and reused: a complete cache is not
predicted again). Then QGIS 3.22 draws, each in a fresh process, at full
extent and at a view of 5 % of the extent's area (centred) into a 1600 x 1000
image with ``QgsMapRendererParallelJob``, twice each (**first** draw in a fresh
process, then the **repeat**):

* **mosaic** ``confidence.vrt`` as the plugin opens it (``vrt://``), with its
  style — *after*; and *before*: ``confidence_flat.vrt``, the single VRT listing
  every tile without overviews that the engine wrote until now (rewritten here
  from the manifest);
* **crowns** ``crowns.shp`` with ``resources/styles/crowns.qml`` and its
  ``.qix`` — *after*; and *before*: the former style (one symbol at every scale:
  a 0.5 mm yellow outline with round joins), with the ``.qix`` moved aside. The
  crowns are also drawn at the two scales where the style is most expensive
  (just inside 1:1,000, the most outlines, and 1:4,000, the most dots).

With ``--million``, a synthetic cache of 1000 x 1000 tiles of 32 px (a 1 GP image,
1,000,000 tile files) is written directly (``tests/big_cache.py``: manifest lines
and tile GeoTIFFs from a few encoded patterns, no model), the engine builds its
mosaic from the committed tiles (the path a cache without a mosaic takes when it
is opened), and the benchmark times opening the mosaic with GDAL and loading it
as a QGIS layer, then draws it as above.

Every figure is printed as a Markdown table, and the rendered images are saved in
``--workdir``/renders for a look. Figures on a shared machine are noisy: compare
those measured in one run. "First" draws run in a fresh process (GDAL's caches
empty), but the operating system's file cache may hold the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMAGE_PX = (1600, 1000)
STYLES = ROOT / "resources" / "styles"
VIEWS = ("full", "5%")


# --------------------------------------------------------------------------- caches

def disc_crowns_model(path: Path) -> Path:
    """A fast crown model for the synthetic forests: canopy where the green band is bright (the discs),
    crown centres where a 2.1 m average of the canopy peaks; crowns split by the engine's watershed
    (``canopy_centres`` kind), 512 px tiles, 64 px overlap, 0.1 m."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, "h", "w"])
    nodes = [
        helper.make_node("Slice", ["image", "g0", "g1", "axis"], ["green"]),
        helper.make_node("Sub", ["green", "level"], ["above"]),
        helper.make_node("Mul", ["above", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["canopy"]),
        helper.make_node("AveragePool", ["canopy"], ["centres"], kernel_shape=[21, 21], pads=[10, 10, 10, 10],
                         strides=[1, 1], count_include_pad=1),
        helper.make_node("Concat", ["canopy", "centres"], ["probs"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "g0"),
             numpy_helper.from_array(np.array([2], np.int64), "g1"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array(0.35, np.float32), "level"),
             numpy_helper.from_array(np.array(30.0, np.float32), "gain")]
    model = helper.make_model(helper.make_graph(nodes, "disc_crowns", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"name": "disc crowns (benchmark)", "output_kind": "canopy_centres", "class_names": ["tree"],
            "gsd_m": 0.1, "tile_size_px": 512, "overlap_px": 64, "scale": 1 / 255, "mean": 0.0, "std": 1.0,
            "seg_thresh": 0.5, "centre_thresh": 0.5, "peak_min_distance_m": 1.0, "min_crown_area_m2": 0.5}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))
    return path


def build_cache(workdir: Path, size: int) -> Path:
    """Predict a ``size``^2 synthetic raster with :func:`disc_crowns_model` (reused when already complete)."""
    from benchmarks.rasters import make_raster
    from engine.cache.status import cache_status

    image = workdir / f"forest_{size}.tif"
    cache = workdir / f"forest_{size}_tcd"
    if cache.is_dir() and cache_status(cache).state == "complete":
        return cache
    if not image.exists():
        make_raster(image, size)
    model = disc_crowns_model(workdir / "disc_crowns.onnx")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "predict", str(image), "--model", str(model), "--out", str(cache)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"[{size}^2] predicted in {time.perf_counter() - t:.0f} s", flush=True)
    return cache


def write_flat_vrt(cache: Path) -> Path:
    """The mosaic as the engine wrote it before overviews: one VRT listing every tile (from the manifest)."""
    from xml.sax.saxutils import escape

    lines = (cache / "tiles.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    with open(cache / "confidence.vrt") as f:  # size, SRS and geotransform as the real mosaic has them
        top = f.read()
    start = top.index("<VRTRasterBand")
    classes = header["classes"]
    sources = []
    for line in lines[1:]:
        rec = json.loads(line)
        rel = rec["cache_files"].get("semantic")
        if rel:
            x0, y0, x1, y1 = rec["bbox"]
            sources.append((escape(rel), x0, y0, x1 - x0, y1 - y0))
    bands = []
    for i, name in enumerate(classes, start=1):
        parts = [f'  <VRTRasterBand dataType="Byte" band="{i}">', f"    <Description>{escape(name)}</Description>"]
        for rel, x, y, w, h in sources:
            parts.append(
                f'    <SimpleSource><SourceFilename relativeToVRT="1">{rel}</SourceFilename>'
                f"<SourceBand>{i}</SourceBand>"
                f'<SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="Byte" '
                f'BlockXSize="{min(w, 256)}" BlockYSize="{min(h, 256)}"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        parts.append("  </VRTRasterBand>")
        bands.append("\n".join(parts))
    path = cache / "confidence_flat.vrt"
    path.unlink(missing_ok=True)
    path.write_text(top[:start] + "\n".join(bands) + "\n</VRTDataset>\n")
    os.chmod(path, 0o444)
    return path


def build_million(workdir: Path) -> tuple[Path, float]:
    """1000 x 1000 tiles of 32 px written directly, and the engine's mosaic built from them."""
    from tests.big_cache import semantic_cache, write_synthetic_cache

    cache = workdir / "million_tcd"
    if (cache / "mosaic" / "state.json").exists():
        return cache, float("nan")
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    records, width, height = write_synthetic_cache(cache, 1000, 1000, 32)
    print(f"[million] wrote {len(records)} tiles and their manifest in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    semantic_cache(cache, width, height).open(records)
    built = time.perf_counter() - t
    print(f"[million] built the mosaic and its overviews in {built:.0f} s", flush=True)
    return cache, built


# --------------------------------------------------------------------------- drawing (child process)

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import (QgsApplication, QgsFillSymbol, QgsMapRendererParallelJob, QgsMapSettings,
                       QgsRasterLayer, QgsRectangle, QgsSingleSymbolRenderer, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor
job = json.loads(sys.argv[1])
app = QgsApplication([], False)
app.initQgis()
t = time.perf_counter()
if job["kind"] == "raster":
    layer = QgsRasterLayer(job["source"], "layer", "gdal")
else:
    layer = QgsVectorLayer(job["source"], "layer", "ogr")
assert layer.isValid(), job["source"]
if job["style"] == "former crowns":
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": "255,221,0,255", "outline_width": "0.5",
                                         "joinstyle": "round"})
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
else:
    message, ok = layer.loadNamedStyle(job["style"])
    assert ok, message
load_s = time.perf_counter() - t
out = {"load_s": load_s}
for name, extent in job["views"].items():
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setOutputSize(QSize(*job["image_px"]))
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setExtent(QgsRectangle(*extent))
    times = []
    for attempt in ("first", "repeat"):
        render = QgsMapRendererParallelJob(settings)
        t = time.perf_counter()
        render.start()
        render.waitForFinished()
        times.append(time.perf_counter() - t)
        if attempt == "first" and job.get("png"):
            render.renderedImage().save(job["png"] + ".png")
    out[name] = times
    out[name + "_scale"] = settings.scale()
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # QGIS 3.22 may crash while tearing down a headless application
"""


def draw(kind: str, source: str, style: str, extent: list, png: Path | None) -> dict:
    """Load the layer in a fresh QGIS process and draw ``extent`` twice: load, first and repeat seconds, scale."""
    job = {"kind": kind, "source": source, "style": style, "views": {"view": extent}, "image_px": IMAGE_PX,
           "png": str(png) if png else None}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            return {"load": r["load_s"], "first": r["view"][0], "repeat": r["view"][1], "scale": r["view_scale"]}
    raise RuntimeError(f"drawing {source} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def views_of(extent: tuple[float, float, float, float]) -> dict:
    """Full extent and a centred window of 5 % of its area."""
    xmin, ymin, xmax, ymax = extent
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    half_w, half_h = (xmax - xmin) * math.sqrt(0.05) / 2, (ymax - ymin) * math.sqrt(0.05) / 2
    return {"full": list(extent), "5%": [cx - half_w, cy - half_h, cx + half_w, cy + half_h]}


def scale_view(extent: tuple[float, float, float, float], scale: float) -> list:
    """A centred view that QGIS draws at about 1:``scale`` into :data:`IMAGE_PX` (96 dpi)."""
    xmin, ymin, xmax, ymax = extent
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    half_w = scale * IMAGE_PX[0] / 96 * 0.0254 / 2
    half_h = half_w * IMAGE_PX[1] / IMAGE_PX[0]
    return [cx - half_w, cy - half_h, cx + half_w, cy + half_h]


def raster_extent(path: Path) -> tuple[float, float, float, float]:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    c, a, _, f, _, e = ds.GetGeoTransform()
    return c, f + e * ds.RasterYSize, c + a * ds.RasterXSize, f


def open_seconds(path: Path, repeat: int = 3) -> float:
    """Best of ``repeat`` fresh processes: time GDAL takes to open the VRT and report its overviews."""
    code = ("import sys, time; from osgeo import gdal; t = time.perf_counter(); ds = gdal.Open(sys.argv[1]); "
            "b = ds.GetRasterBand(1); n = b.GetOverviewCount(); print(time.perf_counter() - t)")
    return min(float(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(repeat))


def measure_cache(cache: Path, label: str, renders: Path) -> list[dict]:
    """Mosaic and crowns, before and after, at full extent and at the 5 % view; the crowns also at the
    style's most expensive scales (just inside 1:1,000 and 1:4,000)."""
    rows = []
    extent = raster_extent(cache / "confidence.vrt")
    views = views_of(extent)
    flat = write_flat_vrt(cache)
    slug = label.split(",")[0].replace(" ", "")
    for variant, vrt in (("before", flat), ("after", cache / "confidence.vrt")):
        row = {"cache": label, "layer": "mosaic", "variant": variant, "open": open_seconds(vrt)}
        for name, view in views.items():
            row[name] = draw("raster", f"vrt://{vrt}", str(STYLES / "confidence.qml"), view,
                             renders / f"{slug}_mosaic_{variant}_{name.strip('%')}")
        rows.append(row)
        print(row, flush=True)
    shp = cache / "crowns.shp"
    qix, hidden = cache / "crowns.qix", cache / "crowns.qix.hidden"
    for variant in ("before", "after"):
        if variant == "before" and qix.exists():
            qix.rename(hidden)
        try:
            style = "former crowns" if variant == "before" else str(STYLES / "crowns.qml")
            row = {"cache": label, "layer": "crowns", "variant": variant}
            for name, view in views.items():
                png = renders / f"{slug}_crowns_{variant}_{name.strip('%')}"
                row[name] = draw("vector", str(shp), style, view, png)
            if variant == "after":
                for name, scale in (("1:950", 950), ("1:3,800", 3800)):
                    row[name] = draw("vector", str(shp), style, scale_view(extent, scale), None)
        finally:
            if hidden.exists():
                hidden.rename(qix)
        rows.append(row)
        print(row, flush=True)
    return rows


def print_tables(rows: list[dict]) -> None:
    def times(r: dict) -> str:
        return f"{r['first']:.2f} / {r['repeat']:.2f} s"

    print("\n| cache | layer | | open: GDAL, QGIS | full extent: first / repeat | 5 % of it: first / repeat |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        full, part = r["full"], r["5%"]
        opened = f"{r['open']:.3f} s, {full['load']:.2f} s" if "open" in r else f"{full['load']:.2f} s"
        print(f"| {r['cache']} | {r['layer']} | {r['variant']} | {opened} | {times(full)} (1:{full['scale']:,.0f})"
              f" | {times(part)} (1:{part['scale']:,.0f}) |")
    print("\n| cache | crowns at 1:990 (outlines): first / repeat | crowns at 1:3,960 (dots): first / repeat |")
    print("|---|---|---|")
    for r in rows:
        if "1:950" in r:
            print(f"| {r['cache']} | {times(r['1:950'])} | {times(r['1:3,800'])} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4096,16384,32768", help="raster edges in pixels (0.1 m)")
    parser.add_argument("--million", action="store_true", help="also a synthetic cache of 1,000,000 tiles")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcd_render_bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    renders = args.workdir / "renders"
    renders.mkdir(exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",") if s):
        cache = build_cache(args.workdir, size)
        tiles = len((cache / "tiles.jsonl").read_text().splitlines()) - 1
        from engine.cache.status import cache_status

        label = f"{size * size / 1e6:,.0f} MP, {tiles:,} tiles, {cache_status(cache).features:,} crowns"
        rows += measure_cache(cache, label, renders)
    if args.million:
        cache, built = build_million(args.workdir)
        label = "1 GP synthetic, 1,000,000 tiles"
        vrt = cache / "confidence.vrt"
        row = {"cache": label, "layer": "mosaic", "variant": "after", "open": open_seconds(vrt)}
        for name, view in views_of(raster_extent(vrt)).items():
            row[name] = draw("raster", f"vrt://{vrt}", str(STYLES / "confidence.qml"), view,
                             renders / f"million_mosaic_after_{name.strip('%')}")
        print(f"[million] mosaic built from the tiles in {built:.0f} s; QGIS loads it in "
              f"{row['full']['load']:.2f} s", flush=True)
        rows.append(row)
        print(row, flush=True)
    print_tables(rows)


if __name__ == "__main__":
    main()
