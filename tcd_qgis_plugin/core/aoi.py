"""Areas of interest as polygon WKT in the raster's CRS (``Job.aoi_wkt``)."""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

from tcd_qgis_plugin.core.texts import translator

# A rectangle's straight edges are curves in another CRS: densify before transforming.
EDGE_POINTS = 32


class AoiError(ValueError):
    """The chosen area cannot be used; ``str()`` is one sentence for the dialog."""


tr = translator("Aoi")


def area_wkt(geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem, raster: QgsRasterLayer,
             transform_context=None) -> str:
    """A polygon in ``crs`` as WKT in the raster's CRS; AoiError if it cannot be transformed or misses the raster.

    ``transform_context``: the one to transform with (a Processing context's); the project's by default.
    """
    geometry = QgsGeometry(geometry)
    if crs != raster.crs():
        context = transform_context if transform_context is not None else QgsProject.instance().transformContext()
        transform = QgsCoordinateTransform(crs, raster.crs(), context)
        try:
            failed = geometry.transform(transform) != Qgis.GeometryOperationResult.Success
        except QgsCsException:
            failed = True
        if failed:
            raise AoiError(tr("The area cannot be transformed to the raster's CRS."))
    if not geometry.intersects(QgsGeometry.fromRect(raster.extent())):
        raise AoiError(tr("The chosen area does not overlap the raster."))
    return geometry.asWkt()


def extent_wkt(extent: QgsRectangle, crs: QgsCoordinateReferenceSystem, raster: QgsRasterLayer) -> str:
    """A map extent in ``crs`` as a polygon in the raster's CRS."""
    if extent.isEmpty():
        raise AoiError(tr("The map extent is empty."))
    return area_wkt(QgsGeometry.fromRect(extent).densifyByCount(EDGE_POINTS), crs, raster)


def selection_wkt(layer: QgsVectorLayer, raster: QgsRasterLayer) -> str:
    """The union of a polygon layer's selected features as a polygon in the raster's CRS."""
    if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
        raise AoiError(tr("{} is not a polygon layer.").format(layer.name()))
    geometries = [f.geometry() for f in layer.getSelectedFeatures() if f.hasGeometry()]
    if not geometries:
        raise AoiError(tr("Select at least one feature in {}.").format(layer.name()))
    union = QgsGeometry.unaryUnion(geometries)
    if union.isEmpty():
        raise AoiError(tr("The selected features of {} have no area.").format(layer.name()))
    return area_wkt(union, layer.crs(), raster)
