"""Reference layers written with OGR for evaluation and fine-tuning tests: boxes, ellipses, points, areas.

Shapes are given in an image's pixels (``xmin, ymin, xmax, ymax``) and written in map
coordinates through the image's geotransform, optionally reprojected to another CRS,
in any OGR driver (GeoPackage, ESRI Shapefile, ...).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

ogr.UseExceptions()
gdal.UseExceptions()

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON"}


def image_grid(image: Path) -> tuple[tuple[float, ...], str]:
    dataset = gdal.Open(str(image))
    return dataset.GetGeoTransform(), dataset.GetProjection()


def _to_map(gt, col: float, row: float) -> tuple[float, float]:
    return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]


def box_ring(gt, box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    return [_to_map(gt, c, r) for c, r in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]


def ellipse_ring(gt, box, n: int = 24) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    ring = [_to_map(gt, cx + rx * math.cos(t), cy + ry * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    return ring + ring[:1]


def write_layer(path: Path, image: Path, boxes, shape: str = "box", crs: str | None = None,
                no_crs: bool = False) -> Path:
    """Write ``boxes`` (pixels of ``image``) as ``box`` polygons, ``ellipse`` polygons or ``point``
    (box centres), in ``crs`` (default: the image's), with OGR's driver for the suffix."""
    gt, projection = image_grid(image)
    src = osr.SpatialReference()
    src.ImportFromWkt(projection)
    dst = osr.SpatialReference()
    dst.SetFromUserInput(crs) if crs else dst.ImportFromWkt(projection)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(src, dst)
    driver = ogr.GetDriverByName(DRIVERS[path.suffix])
    if path.exists():
        driver.DeleteDataSource(str(path))
    dataset = driver.CreateDataSource(str(path))
    kind = ogr.wkbPoint if shape == "point" else ogr.wkbPolygon
    layer = dataset.CreateLayer(path.stem, None if no_crs else dst, kind)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for i, box in enumerate(np.asarray(boxes, float).reshape(-1, 4)):
        if shape == "point":
            geometry = ogr.Geometry(ogr.wkbPoint)
            geometry.AddPoint_2D(*_to_map(gt, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
        else:
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in (box_ring(gt, box) if shape == "box" else ellipse_ring(gt, box)):
                ring.AddPoint_2D(x, y)
            geometry = ogr.Geometry(ogr.wkbPolygon)
            geometry.AddGeometry(ring)
        geometry.Transform(transform)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(geometry)
        feature.SetField("name", f"tree {i}")
        layer.CreateFeature(feature)
    dataset = None
    return path


def write_area(path: Path, image: Path, window_px, crs: str | None = None) -> Path:
    """One rectangle ``(xmin, ymin, xmax, ymax)`` in the image's pixels as an area layer."""
    return write_layer(path, image, [window_px], "box", crs)


def write_crowns_as(path: Path, crowns_file: Path, shape: str = "polygon", crs: str | None = None,
                    keep=slice(None)) -> Path:
    """A cache's crowns written back as a reference layer: the ``polygon`` itself, its ``box`` (envelope)
    or a ``point`` on its surface, the ``keep`` ones, in ``crs`` (default: the crowns'), any driver."""
    source = ogr.Open(str(crowns_file))
    layer = source.GetLayer(0)
    src = layer.GetSpatialRef().Clone()
    dst = osr.SpatialReference()
    dst.SetFromUserInput(crs) if crs else dst.ImportFromWkt(src.ExportToWkt())
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(src, dst)
    crowns = [feature.GetGeometryRef().Clone() for feature in layer]
    geometries = []
    for i, g in enumerate(crowns):
        if shape == "box":
            x0, x1, y0, y1 = g.GetEnvelope()
            g = ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))")
        elif shape == "point":
            # A tree top where no neighbour's outline reaches (simplified neighbours may overlap).
            own = g
            for j, other in enumerate(crowns):
                if j != i and own.Intersects(other):
                    own = own.Difference(other)
            g = own.PointOnSurface()
        geometries.append(g)
    driver = ogr.GetDriverByName(DRIVERS[path.suffix])
    if path.exists():
        driver.DeleteDataSource(str(path))
    dataset = driver.CreateDataSource(str(path))
    out = dataset.CreateLayer(path.stem, dst, ogr.wkbPoint if shape == "point" else ogr.wkbUnknown)
    for g in geometries[keep]:
        g.Transform(transform)
        feature = ogr.Feature(out.GetLayerDefn())
        feature.SetGeometry(g)
        out.CreateFeature(feature)
    dataset = None
    return path
