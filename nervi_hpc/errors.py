"""Every error of nervi-hpc, in one hierarchy: the CLI prints any NerviError as one line and exits with
status 1; the viewer answers a RequestError with its HTTP status."""

from __future__ import annotations

from http import HTTPStatus


class NerviError(Exception):
    """Base of every problem the user can fix (bad input, bad config, corrupt archive)."""


class ConfigError(NerviError, ValueError):
    """A dataset.yaml / cluster.yaml that does not validate."""


class SourceError(NerviError, ValueError):
    """Bad render input: missing or corrupt image, mixed sizes, a CSV that breaks the Cinema spec."""


class StoreError(NerviError, ValueError):
    """A renders.zarr store that is missing, incomplete or not ours."""


class ModelError(NerviError, ValueError):
    """A model configuration that cannot be built (e.g. an image size with no valid upscale plan)."""


class ArchiveError(NerviError, ValueError):
    """A .nervi archive that is truncated, corrupt, of an unknown version or inconsistent."""


class ParameterError(NerviError, ValueError):
    """Decode parameters that are missing, unknown, malformed or outside the trained range."""


class RunError(NerviError, ValueError):
    """A run that does not exist, is ambiguous, or whose manifest cannot be read."""


class SchedulerError(NerviError, RuntimeError):
    """The scheduler refused or failed a request (sbatch, scancel)."""


class RequestError(Exception):
    """A request the viewer's server refuses: its HTTP status and a one-line reason (not a
    NerviError: the server answers it, the CLI never sees it)."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
