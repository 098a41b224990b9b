"""The dialog's raster check never changes GDAL's exception mode, which QGIS's plugins share."""

import pytest
from osgeo import gdal

from tcd_qgis_plugin.core.rasters import read_facts


@pytest.mark.parametrize("exceptions", [True, False])
def test_read_facts_leaves_gdal_exceptions_as_they_were(tmp_path, raster_path, exceptions):
    was = gdal.GetUseExceptions()
    (gdal.UseExceptions if exceptions else gdal.DontUseExceptions)()
    try:
        text = tmp_path / "notes.tif"
        text.write_text("not a raster")
        assert read_facts(text) is None
        facts = read_facts(raster_path)
        assert (facts.width, facts.height, facts.bands, facts.dtype) == (320, 320, 3, "uint8")
        assert bool(gdal.GetUseExceptions()) is exceptions
    finally:
        (gdal.UseExceptions if was else gdal.DontUseExceptions)()
