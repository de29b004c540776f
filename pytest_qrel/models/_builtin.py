"""Import every built-in model source module so its registry entries exist."""

from . import embedded  # noqa: F401
from . import python_source  # noqa: F401
from . import timm_source  # noqa: F401
from . import open_clip_source  # noqa: F401
