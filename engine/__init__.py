"""TCD engine: tiled tree crown delineation of georeferenced rasters into a resumable cache.

``import engine`` is cheap and needs only the standard library: the names below
are loaded on first use, so a QGIS without the engine's packages can still
import it and ask what is missing. The folders show the pipeline (see
``docs/ARCHITECTURE.md``): ``tiling`` → ``models`` → ``postprocess`` →
``cache``, driven by ``run``; ``cli`` and the plugin are two clients.

    from engine import Job, predict
    result = predict(Job(image="ortho.tif", cache_dir="ortho_tcd"), progress=print)
"""

__version__ = "0.2.0"

_EXPORTS = {
    "Job": "settings",
    "Output": "settings",
    "VectorFormat": "settings",
    "default_cache_dir": "settings",
    "predict": "run.predict",
    "find_mismatch": "run.predict",
    "Progress": "run.predict",
    "RunResult": "run.predict",
    "cache_status": "cache.status",
    "cache_layers": "cache.status",
    "CacheStatus": "cache.status",
    "CacheLayer": "cache.status",
    "MANIFEST_NAME": "cache.manifest",
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
