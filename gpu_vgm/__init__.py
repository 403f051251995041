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
    "VGMEncoder",
    "VGMError",
    "__version__",
    "load_models",
    "save_models",
]


def __getattr__(name):
    # VGMEncoder is a scikit-learn estimator: importing scikit-learn takes about a second,
    # which `import gpu_vgm` (and every Dask worker) should not pay until it is used.
    if name == "VGMEncoder":
        from gpu_vgm.dataframe import VGMEncoder

        return VGMEncoder
    raise AttributeError(f"module 'gpu_vgm' has no attribute {name!r}")
