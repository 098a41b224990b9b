"""TCD engine: tiled tree crown delineation of georeferenced rasters into a resumable cache.

``import engine`` is cheap and needs only the standard library: the names below
are loaded on first use, so a QGIS without rasterio or onnxruntime can still read
caches (``cache_status``, ``cache_layers``) and model metadata (``describe_model``).
Prediction itself is ``engine.predict.predict(job, progress=..., cancelled=...)``.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Job": "settings",
    "Output": "settings",
    "VectorFormat": "settings",
    "Progress": "predict",
    "RunResult": "predict",
    "cache_status": "status",
    "cache_layers": "status",
    "CacheStatus": "status",
    "CacheLayer": "status",
    "describe_model": "model",
    "default_model_path": "model",
    "TCDError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
