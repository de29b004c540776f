"""Import every built-in dataset source module so its registry entries exist."""

from . import embedded  # noqa: F401
from . import folders  # noqa: F401  (imagefolder, filelist)
from . import torchvision_source  # noqa: F401
from . import shifts  # noqa: F401  (shift:<corruption>/<severity>)
from . import imagetext  # noqa: F401  (imagetext:<folder>, image files with captions)
