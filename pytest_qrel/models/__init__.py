"""Model sources: a registry keyed by the scheme of ``source: "<scheme>:<arg>"``."""

from .base import MODEL_SOURCES, LoadedModel, load_model, state_dict_sha256

__all__ = ["MODEL_SOURCES", "LoadedModel", "load_model", "state_dict_sha256"]
