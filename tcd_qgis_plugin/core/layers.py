"""The layers of one cache, kept in one layer-tree group of the project (main thread only).

``sync()`` adds the layers the cache holds by now (the engine creates its files
as the first tiles are committed) and reloads those already there: the engine
rewrites the confidence VRT atomically and appends crowns to the vector file.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    Qgis,
    QgsLayerTreeGroup,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tcd_qgis_plugin.core.texts import LOG_TAG
from tcd_qgis_plugin.engine.cache.status import cache_layers
from tcd_qgis_plugin.paths import style_path


def group_name(cache_dir: Path) -> str:
    """The layer group of a run is named after its cache folder."""
    return Path(cache_dir).name


class CacheLayerGroup:
    def __init__(self, project: QgsProject, cache_dir: Path):
        self.project = project
        self.cache_dir = Path(cache_dir)
        self._layer_ids: dict[str, str] = {}  # layer source -> layer id in the project

    def group(self, create: bool = True) -> QgsLayerTreeGroup | None:
        root = self.project.layerTreeRoot()
        group = root.findGroup(group_name(self.cache_dir))
        if group is None and create:
            group = root.insertGroup(0, group_name(self.cache_dir))
        return group

    def layers(self) -> list:
        """The layers of this cache still in the project."""
        return [layer for layer in map(self.project.mapLayer, self._layer_ids.values()) if layer is not None]

    def sync(self) -> list:
        """Add layers new in the cache, reload the others; returns the added layers."""
        added = []
        self._adopt_group_layers()
        for entry in cache_layers(self.cache_dir):
            source = layer_source(entry)
            layer = self.project.mapLayer(self._layer_ids.get(source, ""))
            if layer is not None:
                _reload(layer)
                continue
            layer = (QgsRasterLayer(source, entry.name, "gdal") if entry.kind == "raster"
                     else QgsVectorLayer(source, entry.name, "ogr"))
            if not layer.isValid():
                continue  # not readable yet; the next sync tries again
            message, styled = layer.loadNamedStyle(str(style_path(entry.style)))
            if not styled:
                QgsMessageLog.logMessage(f"The {entry.style} style could not be applied: {message}", LOG_TAG,
                                         Qgis.Warning)
            if self.project.addMapLayer(layer, False) is None:
                continue
            group = self.group()
            # Crowns above the confidence raster, whatever order they appear in.
            if entry.kind == "vector":
                group.insertLayer(0, layer)
            else:
                group.addLayer(layer)
            self._layer_ids[source] = layer.id()
            added.append(layer)
        return added

    def _adopt_group_layers(self) -> None:
        """Layers already in the group (an earlier session, a saved project) are reused, not doubled."""
        group = self.group(create=False)
        if group is None:
            return
        for node in group.findLayers():
            layer = node.layer()
            if layer is not None and layer.id() not in self._layer_ids.values():
                self._layer_ids.setdefault(layer.source(), layer.id())

    def remove(self) -> None:
        """Take this cache's layers and group out of the project (before deleting the files)."""
        self._adopt_group_layers()
        self.project.removeMapLayers([i for i in self._layer_ids.values() if self.project.mapLayer(i)])
        self._layer_ids.clear()
        group = self.group(create=False)
        if group is not None and not group.children():
            group.parent().removeChildNode(group)


def layer_source(entry) -> str:
    """The data source string of a cache layer.

    The confidence mosaic is opened through GDAL's ``vrt://`` connection string,
    not as the plain .vrt file: QGIS 3.22 computes statistics when it loads a
    raster, GDAL stores them in an open VRT and writes the whole VRT back to disk
    when QGIS closes it, which would overwrite the mosaic the engine has rewritten
    since. Opened as ``vrt://``, the file is only a source and is never written;
    reloading it also rereads the current tile list.
    """
    if entry.layer_name is not None:
        return f"{entry.path}|layername={entry.layer_name}"
    if entry.kind == "raster" and Path(entry.path).suffix.lower() == ".vrt":
        return f"vrt://{entry.path}"
    return str(entry.path)


def _reload(layer) -> None:
    layer.dataProvider().reloadData()
    if isinstance(layer, QgsVectorLayer) and layer.fields().count() != layer.dataProvider().fields().count():
        # A new Shapefile's .dbf gets its field list with the first crown: the provider
        # reads it again on reload, but the layer keeps the list it was opened with.
        layer.updateFields()
    if isinstance(layer, QgsVectorLayer):
        layer.updateExtents()
    layer.triggerRepaint()


# While runs are live the canvas hands over whole pictures only (milliseconds between
# the partial pictures it would otherwise show while drawing).
HELD_UPDATE_INTERVAL_MS = 3_600_000


class SteadyCanvas:
    """Keeps the map canvas from showing half-drawn pictures while a run's layers reload.

    QGIS drops a layer's cached picture when the layer asks for a repaint, and while
    it draws the canvas shows what is drawn so far every ``mapUpdateInterval`` (250 ms
    by default): a crowns layer of ten thousand polygons is missing from the screen
    for most of its redraw, at every reload. While runs are live the interval is
    raised, so the canvas keeps its last finished picture until the next one is
    done; the plugin also waits for a drawing to end before the next reload
    (:meth:`busy`), so that drawings are not restarted before they finish.
    """

    def __init__(self, canvas):
        self.canvas = canvas
        self._saved_interval_ms: int | None = None

    def hold(self) -> None:
        if self.canvas is not None and self._saved_interval_ms is None:
            self._saved_interval_ms = self.canvas.mapUpdateInterval()
            self.canvas.setMapUpdateInterval(HELD_UPDATE_INTERVAL_MS)

    def release(self) -> None:
        if self.canvas is not None and self._saved_interval_ms is not None:
            self.canvas.setMapUpdateInterval(self._saved_interval_ms)
            self._saved_interval_ms = None

    def busy(self) -> bool:
        return self.canvas is not None and self.canvas.isDrawing()
