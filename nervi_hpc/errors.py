"""User-facing errors: the CLI prints any NerviError as one line and exits with status 1."""


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
