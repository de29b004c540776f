"""Model sources: a registry keyed by the scheme of ``source: "<scheme>:<arg>"``.

The built-in sources register themselves when :mod:`._builtin` imports them, here: importing any
module of this package (``pytest_qrel.models.base`` included) runs this file first, so every lookup sees
them, whatever was imported before. (timm's pattern: a leaf registry, entries registered by the
package's ``__init__``; the lookups never import ``_builtin``, so nothing imports back up.)
"""

from . import _builtin  # noqa: F401  (registers the built-in sources: see above)
from .base import MODEL_SOURCES, LoadedModel, load_model, state_dict_sha256

__all__ = ["MODEL_SOURCES", "LoadedModel", "load_model", "state_dict_sha256"]
