"""TCD engine: tiled tree crown delineation of georeferenced rasters into a resumable cache.

``import engine`` is cheap and needs only the standard library: the names below
are loaded on first use, so a QGIS without rasterio or onnxruntime can still read
caches (``cache_status``, ``cache_layers``) and model metadata (``describe_model``).
Prediction itself is ``engine.run.predict.predict(job, progress=..., cancelled=...)``.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Job": "settings",
    "Output": "settings",
    "VectorFormat": "settings",
    "Progress": "run.predict",
    "RunResult": "run.predict",
    "cache_status": "cache.status",
    "cache_layers": "cache.status",
    "CacheStatus": "cache.status",
    "CacheLayer": "cache.status",
    "describe_model": "models.spec",
    "default_model_path": "models.spec",
    "TCDError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
