"""Typed errors for bad input.

Each is raised deep inside a module and caught once at the CLI boundary
(`utils.system_utils.run_cli`), which prints one line and exits non-zero.
The message must say what is wrong *and* how to fix it.
"""


class ThreeDSRError(Exception):
    """Base class: an error caused by the user's input, not a bug."""


class SceneFormatError(ThreeDSRError):
    """A dataset folder is missing, incomplete or in a format we do not read."""


class PlyFormatError(ThreeDSRError):
    """A point-cloud / Gaussian PLY file is missing, truncated or lacks properties."""


class ModelNotFoundError(ThreeDSRError):
    """A trained model folder, iteration or set of weights does not exist."""


class BackendUnavailableError(ThreeDSRError):
    """A rasterizer backend was requested but cannot run on this machine."""
