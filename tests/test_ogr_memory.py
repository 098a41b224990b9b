"""In-memory vector datasets work on every GDAL without a warning ("Memory" is deprecated from GDAL 3.11)."""

import numpy as np
from osgeo import gdal, ogr, osr

from engine.postprocess.heights import _rasterise
from engine.postprocess.vectorise import label_polygons


def test_polygonize_and_rasterize_in_memory_without_gdal_messages():
    messages = []
    gdal.PushErrorHandler(lambda level, number, text: messages.append((level, text)))
    try:
        labels = np.zeros((8, 8), np.int32)
        labels[2:5, 2:6] = 7
        values, polygons = label_polygons(labels, (1.0, 0.0, 100.0, 0.0, -1.0, 200.0))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        square = ogr.CreateGeometryFromWkt("POLYGON ((102 198, 106 198, 106 195, 102 195, 102 198))")
        mask = _rasterise(square, (100.0, 1.0, 0.0, 200.0, 0.0, -1.0), (0, 0, 8, 8), srs, all_touched=False)
    finally:
        gdal.PopErrorHandler()
    assert values.tolist() == [7] and polygons[0].area == 12.0
    assert polygons[0].bounds == (102.0, 195.0, 106.0, 198.0)
    assert np.array_equal(mask, labels == 7)
    assert messages == [], f"GDAL {gdal.__version__}: {messages}"
