"""In-memory OGR datasets on every GDAL the engine meets.

GDAL 3.11 gave the raster driver "MEM" vector layers and deprecated the vector-only
"Memory" driver, which then warns at every use; GDAL before 3.11 (Debian 12 has 3.6)
has only "Memory" for vectors.
"""

from __future__ import annotations

from osgeo import ogr


def vector_dataset():
    """An empty in-memory vector dataset, for layers GDAL fills (Polygonize) or reads (RasterizeLayer)."""
    driver = ogr.GetDriverByName("MEM") or ogr.GetDriverByName("Memory")  # "MEM" is vector too from GDAL 3.11
    return driver.CreateDataSource("")
