"""QGIS entry point of the Tree crown delineation plugin.

Nothing imported here may need onnxruntime, rasterio or scipy: the plugin must
load in a stock QGIS so that it can offer to install them. Prediction itself runs
in a worker process (``tcd_qgis_plugin.engine.worker``). The plugin enters
QGIS's module namespace as ``tcd_qgis_plugin`` alone: it imports itself by its
own name and never edits ``sys.path`` (only its installed packages' folder is
added, by :func:`tcd_qgis_plugin.dependencies.activate`).
"""


def classFactory(iface):
    from tcd_qgis_plugin import dependencies

    dependencies.activate()
    from tcd_qgis_plugin.plugin import TCDPlugin

    return TCDPlugin(iface)
