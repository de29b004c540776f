"""Dataset sources: a registry keyed by the scheme of ``source: "<scheme>:<arg>"``."""

from .base import DATASET_SOURCES, OOD_LABEL, ImageSet, TensorImageSet, load_dataset, parse_source

__all__ = ["DATASET_SOURCES", "OOD_LABEL", "ImageSet", "TensorImageSet", "load_dataset", "parse_source"]
