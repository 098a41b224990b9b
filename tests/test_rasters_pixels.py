"""Pixels as users' rasters hold them: palettes, 16-bit and float values, alpha and nodata edges.

Every file is made by GDAL from the bundled real forest plot (NEON OSBS_029, 0.1 m) and
predicted by the bundled model.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from osgeo import gdal

from engine.errors import CacheMismatchError, RasterError
from engine.run.predict import find_mismatch, predict
from engine.settings import Job
from engine.tiling.raster import describe_raster
from engine.tiling.stretch import cumulative_cut
from tests.rasters import read_confidence, read_crowns, write_raster

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample" / "OSBS_029.tif"

gdal.UseExceptions()


def summary(cache):
    return json.loads((Path(cache) / "summary.json").read_text())


def settings(cache):
    return json.loads((Path(cache) / "tiles.jsonl").read_text().splitlines()[0])["fingerprints"]["settings"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ref") / "c"
    predict(Job(image=SAMPLE, cache_dir=cache))
    return cache


def test_paletted_raster_is_read_in_its_colours(tmp_path, reference):
    # GDAL's rgb2pct: a 256-colour median-cut palette, dithered.
    src = gdal.Open(str(SAMPLE))
    bands = [src.GetRasterBand(i) for i in (1, 2, 3)]
    table = gdal.ColorTable()
    gdal.ComputeMedianCutPCT(*bands, 256, table)
    out = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "indexed.tif"), src.RasterXSize, src.RasterYSize, 1,
                                               gdal.GDT_Byte)
    out.SetGeoTransform(src.GetGeoTransform())
    out.SetProjection(src.GetProjection())
    out.GetRasterBand(1).SetRasterColorTable(table)
    gdal.DitherRGB2PCT(*bands, out.GetRasterBand(1), table)
    out = src = None
    info = describe_raster(tmp_path / "indexed.tif")
    assert info.count == 1 and info.paletted
    predict(Job(image=tmp_path / "indexed.tif", cache_dir=tmp_path / "c"))
    ref = summary(reference)
    got = summary(tmp_path / "c")
    assert got["trees"] == pytest.approx(ref["trees"], rel=0.15)
    assert got["canopy_m2"] == pytest.approx(ref["canopy_m2"], rel=0.1)
    assert settings(tmp_path / "c")["value_range"] is None


def test_a_paletted_rasters_nodata_index_is_filled_from_its_colours(tmp_path):
    img = np.zeros((100, 120), np.uint8)
    img[:, 60:] = 1
    path = write_raster(tmp_path / "pal.tif", img, photometric="palette", nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (40, 140, 40, 255)})
    from engine.tiling.grid import plan_tiles
    from engine.tiling.reader import TileReader

    info = describe_raster(path)
    tile = plan_tiles(info, 128, 16, 0.1)[0]
    reader = TileReader(info, (1, 2, 3), info.crs_wkt, 128, 0.1, fill=True)
    raw, valid = reader.read(tile)
    reader.close()
    assert not valid[:100, :60].any() and valid[:100, 60:120].all()
    np.testing.assert_array_equal(raw[:, 50, 70], [40, 140, 40])
    np.testing.assert_array_equal(raw[:, 50, 50], [40, 140, 40])  # mirrored from the valid side, not black


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """OSBS_029 without its nodata (255, where it saturates), as 8-bit, as 16-bit (each value times 257) and
    as float reflectance (value / 255), and its 8-bit prediction."""
    folder = tmp_path_factory.mktemp("deep")
    gdal.Translate(str(folder / "plain.tif"), str(SAMPLE), options=["-a_nodata", "none"])
    gdal.Translate(str(folder / "deep16.tif"), str(folder / "plain.tif"),
                   options=["-ot", "UInt16", "-scale", "0", "255", "0", "65535"])
    gdal.Translate(str(folder / "float.tif"), str(folder / "plain.tif"),
                   options=["-ot", "Float32", "-scale", "0", "255", "0", "1"])
    predict(Job(image=folder / "plain.tif", cache_dir=folder / "plain_tcd"))
    return folder


def qgis_default_range(path):
    """The min/max QGIS's default renderer stretches each band with (real QGIS, its default settings)."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), "x")
    renderer = layer.renderer()
    enhancements = (renderer.redContrastEnhancement(), renderer.greenContrastEnhancement(),
                    renderer.blueContrastEnhancement())
    return [(ce.minimumValue(), ce.maximumValue()) for ce in enhancements]


@pytest.mark.parametrize("name", ["deep16.tif", "float.tif"])
def test_16_bit_and_float_rasters_are_stretched_as_qgis_shows_them(tmp_path, deep, name):
    path = deep / name
    predict(Job(image=path, cache_dir=tmp_path / "c"))
    recorded = settings(tmp_path / "c")["value_range"]
    assert len(recorded) == 3
    for (lo, hi), (q_lo, q_hi) in zip(recorded, qgis_default_range(path)):
        span = q_hi - q_lo
        assert abs(lo - q_lo) < 0.02 * span and abs(hi - q_hi) < 0.02 * span
    # What the model saw is what GDAL's own stretch to 8 bits with that range shows.
    scale = [f"-scale_{b}" for b in (1, 2, 3)]
    options = ["-ot", "Byte"] + [v for b, (lo, hi) in zip(scale, recorded) for v in (b, str(lo), str(hi), "0", "255")]
    gdal.Translate(str(tmp_path / "byte.tif"), str(path), options=options)
    predict(Job(image=tmp_path / "byte.tif", cache_dir=tmp_path / "byte"))
    got, byte = summary(tmp_path / "c"), summary(tmp_path / "byte")
    assert got["trees"] == pytest.approx(byte["trees"], rel=0.1)
    assert got["canopy_m2"] == pytest.approx(byte["canopy_m2"], rel=0.05)


def test_a_value_range_override_reads_the_16_bit_raster_as_its_8_bit_original(tmp_path, deep):
    predict(Job(image=deep / "deep16.tif", cache_dir=tmp_path / "c", value_range=(0, 65535)))
    assert settings(tmp_path / "c")["value_range"] == [[0.0, 65535.0]] * 3
    assert len(read_crowns(tmp_path / "c")) == len(read_crowns(deep / "plain_tcd"))
    np.testing.assert_allclose(read_confidence(tmp_path / "c").astype(int), read_confidence(deep / "plain_tcd"),
                               atol=1)


def test_resume_keeps_the_recorded_stretch(tmp_path, deep, monkeypatch):
    path = deep / "deep16.tif"
    predict(Job(image=path, cache_dir=tmp_path / "c"))
    before = (tmp_path / "c" / "tiles.jsonl").read_text()

    def no_statistics(*args, **kwargs):
        raise AssertionError("a resumed run must take the recorded value range, not work out another")

    monkeypatch.setattr("engine.run.predict.cumulative_cut", no_statistics)
    assert find_mismatch(Job(image=path, cache_dir=tmp_path / "c")) is None
    assert predict(Job(image=path, cache_dir=tmp_path / "c")).state == "complete"
    assert (tmp_path / "c" / "tiles.jsonl").read_text() == before
    mismatch = find_mismatch(Job(image=path, cache_dir=tmp_path / "c", value_range=(0, 1000)))
    assert isinstance(mismatch, CacheMismatchError) and mismatch.differences == ("value range",)


def test_stretch_statistics_skip_nodata(tmp_path):
    img = np.full((3, 200, 200), 0, np.uint16)
    img[:, :, 100:] = np.arange(100, dtype=np.uint16)[None, None, :] * 10 + 1000
    path = write_raster(tmp_path / "half.tif", img, nodata=0)
    (lo, hi), *_ = cumulative_cut(describe_raster(path), (1, 2, 3))
    assert 1000 <= lo <= 1030 and 1960 <= hi <= 1990


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_a_constant_raster_is_refused_in_one_sentence(tmp_path, dtype):
    path = write_raster(tmp_path / "flat.tif", np.full((3, 50, 60), 700, dtype))
    with pytest.raises(RasterError) as err:
        predict(Job(image=path, cache_dir=tmp_path / "c"))
    assert str(err.value) == ("flat.tif holds the same value (700) in every pixel of band 1: "
                              "there is no image to stretch.")
    assert not (tmp_path / "c").exists()


def edge_cols(edge, slant, rows=400):
    """Column of the edge on each row: ``edge`` at row 200, leaning ``slant`` columns a row."""
    return edge + np.round(slant * (np.arange(rows) - 200)).astype(int)


def canopy_beside(cache, edge, slant, width_px=20):
    """Share of canopy (confidence >= 0.5) in the ``width_px`` pixels (2 m) right of the edge on each row."""
    conf = read_confidence(cache)[0]
    cols = edge_cols(edge, slant)[:, None] + np.arange(width_px)[None, :]
    return float((np.take_along_axis(conf, cols, axis=1) >= 128).mean())


@pytest.mark.parametrize("mask,slant", [("alpha", 0.0), ("nodata", 0.0), ("alpha", 0.3)])
def test_canopy_beside_an_alpha_or_nodata_edge_is_called_as_inside(tmp_path, reference, mask, slant, monkeypatch):
    """The plot's left part made transparent (an alpha band) or nodata (0), its edge at four places, upright
    or leaning as a warp's collar does: the canopy called in the 2 m beside the edge must be the canopy
    called there when the whole plot is seen (black beyond it, as before tile plan 3, called almost none)."""
    import engine.run.predict as run_predict
    from engine.tiling.grid import PLAN_EDGE

    with rasterio.open(SAMPLE) as src:
        rgb, profile = src.read(), src.profile
    errors, black = [], []
    for edge in (100, 150, 200, 250):
        outside = np.arange(400)[None, :] < edge_cols(edge, slant)[:, None]
        if mask == "alpha":
            alpha = np.where(outside, 0, 255).astype(np.uint8)
            data, extra = np.concatenate([rgb, alpha[None]]), dict(photometric="RGB", alpha="YES")
        else:
            data, extra = np.maximum(rgb, 1), dict(nodata=0)
            data[:, outside] = 0
        path = write_raster(tmp_path / f"edge{edge}.tif", data, crs=profile["crs"], transform=profile["transform"],
                            **extra)
        predict(Job(image=path, cache_dir=tmp_path / f"c{edge}"))
        assert not read_confidence(tmp_path / f"c{edge}")[0][outside].any()  # nothing where there is no data
        inside = canopy_beside(reference, edge, slant)
        errors.append(canopy_beside(tmp_path / f"c{edge}", edge, slant) - inside)
        with monkeypatch.context() as m:
            m.setattr(run_predict, "LATEST_PLAN", PLAN_EDGE)
            predict(Job(image=path, cache_dir=tmp_path / f"black{edge}"))
        black.append(canopy_beside(tmp_path / f"black{edge}", edge, slant) - inside)
    # Measured: upright within 8 points at each edge, 3 on average; leaning within 12, 5 on average;
    # black: 23-60 points short.
    assert max(abs(e) for e in errors) < (0.1 if slant == 0 else 0.15) and abs(np.mean(errors)) < 0.06, errors
    assert max(black) < -0.15, black


def test_value_range_on_the_command_line(tmp_path, deep):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-W", "ignore", "-m", "engine", "predict", *map(str, args), "--quiet"],
                              capture_output=True, text=True, timeout=300)

    proc = cli(deep / "deep16.tif", "--out", tmp_path / "c", "--value-range", "0,65535")
    assert proc.returncode == 0, proc.stderr
    assert settings(tmp_path / "c")["value_range"] == [[0.0, 65535.0]] * 3
    bad = cli(deep / "deep16.tif", "--out", tmp_path / "bad", "--value-range", "65535")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: The value range must be two numbers, the minimum below the maximum, not '65535'."]


@pytest.mark.usefixtures("per_tile_commits")
def test_a_cache_of_tile_plan_2_resumes_as_it_was_made(tmp_path, crown_model, monkeypatch):
    """Black beyond valid pixels, the image's own CRS, windows inside the image: a plan-2 cache cut short
    and finished by this engine is the plan-2 cache made in one go."""
    import engine.run.predict as run_predict
    from engine.tiling.grid import PLAN_EDGE
    from tests.conftest import SQUARES
    from tests.rasters import assert_same_cache, crowns_image, snapshot

    img = crowns_image(320, 320, SQUARES)
    alpha = np.full((1, 320, 320), 255, np.uint8)
    alpha[0, :, :37] = 0
    path = write_raster(tmp_path / "img.tif", np.concatenate([img, alpha]), photometric="RGB", alpha="YES")
    with monkeypatch.context() as m:
        m.setattr(run_predict, "LATEST_PLAN", PLAN_EDGE)
        predict(Job(image=path, cache_dir=tmp_path / "clean", model=crown_model))
        seen = []
        first = predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model),
                        progress=lambda p: p.tile_id and seen.append(p.tile_id), cancelled=lambda: len(seen) >= 5)
    assert first.state == "cancelled"
    assert predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model)).state == "complete"
    assert json.loads((tmp_path / "c" / "tiles.jsonl").read_text().splitlines()[0])["plan"] == PLAN_EDGE
    assert_same_cache(snapshot(tmp_path / "c"), snapshot(tmp_path / "clean"))
    predict(Job(image=path, cache_dir=tmp_path / "new", model=crown_model))
    assert json.loads((tmp_path / "new" / "tiles.jsonl").read_text().splitlines()[0])["plan"] == 3
