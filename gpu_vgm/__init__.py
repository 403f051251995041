"""gpu_vgm: lossless mode-specific normalization (CTGAN's VGM encoding) at billion-row scale."""

from gpu_vgm.errors import InputError, ModelFileError, NotFittedError, OutputError, VGMError
from gpu_vgm.model import ScaleVGM
from gpu_vgm.modelfile import load_models, save_models

__version__ = "0.1.0"
__all__ = [
    "InputError",
    "ModelFileError",
    "NotFittedError",
    "OutputError",
    "ScaleVGM",
    "VGMError",
    "__version__",
    "load_models",
    "save_models",
]
