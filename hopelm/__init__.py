"""hopelm: Nested Learning and the HOPE architecture, faithful, fast and usable."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "build_model", "list_models", "load", "load_config", "__version__"]


def __getattr__(name: str):
    # Lazy: `import hopelm.config` (and the CLI's argument parsing) stays free of torch-heavy imports.
    if name in ("build_model", "list_models", "load"):
        from hopelm import api
        return getattr(api, name)
    if name in ("Config", "ConfigError", "load_config"):
        from hopelm import config
        return getattr(config, name)
    raise AttributeError(f"module 'hopelm' has no attribute {name!r}")
