"""The dialog's raster check never changes GDAL's exception mode, which QGIS's plugins share."""

from osgeo import gdal

from tcd_qgis_plugin.core.rasters import read_facts


def check(tmp_path, raster_path):
    mode = gdal.GetUseExceptions()
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert read_facts(text) is None
    facts = read_facts(raster_path)
    assert (facts.width, facts.height, facts.bands, facts.dtype) == (320, 320, 3, "uint8")
    assert gdal.GetUseExceptions() == mode


def test_read_facts_leaves_gdal_exceptions_as_they_were(tmp_path, raster_path):
    check(tmp_path, raster_path)
    # As once any plugin (or the engine, imported in QGIS) has turned them on: switching them
    # off again then raises, which aborted QGIS from the dialog.
    gdal.UseExceptions()
    check(tmp_path, raster_path)
