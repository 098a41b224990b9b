"""QGIS entry point of the Tree crown delineation plugin.

Nothing imported here may need onnxruntime, rasterio or scipy: the plugin must
load in a stock QGIS so that it can offer to install them. Prediction itself runs
in a worker process (``python -m engine.worker``).
"""

from .paths import add_engine_to_path


def classFactory(iface):
    from . import dependencies

    dependencies.activate()
    add_engine_to_path()
    from .plugin import TCDPlugin

    return TCDPlugin(iface)
