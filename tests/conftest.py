"""Shared fixtures: tiny analytic render collections written to real Zarr stores."""

import pytest

from tests.scenes import DiskScene
from nervi_hpc.stages.ingest.run import ingest


@pytest.fixture
def make_store(tmp_path):
    """make_store(name, **DiskScene.grid kwargs) → path of a freshly ingested renders.zarr."""

    def make(name="renders.zarr", shard_size=4, **kw):
        path = tmp_path / name
        ingest(DiskScene.grid(**kw), path, shard_size=shard_size, workers=1, progress=False)
        return path

    return make


def pytest_configure(config):
    """Tests run two at a time on two cores: one torch thread each keeps them from fighting."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA is present and are skipped, saying so, elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
