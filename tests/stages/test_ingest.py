"""Ingest (source → sharded renders.zarr) and the RenderStore reader, on tiny array sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from nervi_hpc.data.sources import Source
from nervi_hpc.data.store import RenderStore, partial_path
from nervi_hpc.errors import SourceError, StoreError
from nervi_hpc.stages.ingest.run import ingest
from nervi_hpc.stages.ingest.shards import default_shard_size

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[1]
COUNT, HEIGHT, WIDTH = 30, 16, 24
OBJECT = (slice(4, 12), slice(6, 18))  # where make_source draws the foreground


@dataclass
class ArraySource(Source):
    """Images held in memory. `fail_at`: reading that image raises SourceError; `exit_at`: reading
    that image kills the process (os._exit), as a crash or `kill -9` would."""

    rgb: np.ndarray | None = None
    alpha: np.ndarray | None = None
    fail_at: int | None = None
    exit_at: int | None = None
    seen: list[int] = field(default_factory=list)  # every index read in this process

    def read(self, indices):
        indices = list(indices)
        self.seen.extend(indices)
        if self.exit_at in indices:
            os._exit(9)
        if self.fail_at in indices:
            raise SourceError(f"img_{self.fail_at:03d}.png: corrupt or unreadable image (truncated)")
        return self.rgb[indices], None if self.alpha is None else self.alpha[indices]


def make_source(count=COUNT, *, background=(255, 255, 255), declared=True, noise=0, alpha=False,
                tolerance=0, seed=0, description="array test source", **behaviour) -> ArraySource:
    """`count` images of HEIGHT×WIDTH: a random-coloured rectangle at OBJECT on `background`
    (± `noise` per channel), params (t, theta, phi) all distinct."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    rgb[:] = np.clip(np.asarray(background) + rng.integers(-noise, noise + 1, rgb.shape), 0, 255)
    rgb[(slice(None), *OBJECT)] = rng.integers(0, 256, (count, 8, 12, 3))
    rgb[(slice(None), *OBJECT)][..., 0] = np.where(background[0] > 127, 0, 255)  # never the background
    alpha_values = rng.integers(0, 256, (count, HEIGHT, WIDTH), dtype=np.uint8) if alpha else None
    if alpha:
        alpha_values[:, 0, :3] = [0, 255, 1]  # the extremes for sure
    index = np.arange(count)
    params = np.stack([index % 3 * 0.5, index // 3 * 10.0, -index * 1.5], axis=1)
    return ArraySource(("t", "theta", "phi"), params, (HEIGHT, WIDTH), "ir",
                       tuple(background) if declared else None, tolerance, description,
                       rgb=rgb, alpha=alpha_values, **behaviour)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def object_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[OBJECT] = 1
    return mask


def run_python(code: str, *launcher: str, args=()) -> subprocess.CompletedProcess:
    """Run `code` (with `args` as sys.argv[1:]) in a fresh interpreter, optionally under a launcher,
    that can import this test module."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.run([*launcher, sys.executable, "-c", prelude + textwrap.dedent(code), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------------------------
# Content


def test_round_trip_is_lossless_with_schema_and_attrs(tmp_path):
    source = make_source()
    result = ingest(source, tmp_path / "r.zarr", shard_size=7, workers=1, progress=False)
    store = RenderStore.open(tmp_path / "r.zarr")
    images, masks = store.read(range(COUNT))
    assert np.array_equal(images, source.rgb)
    assert np.array_equal(masks, np.broadcast_to(object_mask(), masks.shape))
    assert store.params.dtype == np.float64 and np.array_equal(store.params, source.params)
    assert (store.count, store.height, store.width, len(store)) == (COUNT, HEIGHT, WIDTH, COUNT)
    assert store.param_names == ("t", "theta", "phi")
    assert store.grids == {"t": [0.0, 0.5, 1.0], "theta": [10.0 * k for k in range(10)],
                           "phi": sorted(-1.5 * k for k in range(COUNT))}
    assert store.ranges == {"t": (0.0, 1.0), "theta": (0.0, 90.0), "phi": (-43.5, 0.0)}
    assert (store.background, store.mode, store.source, store.shard_size) == \
        ((255, 255, 255), "ir", "array test source", 7)
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert group.attrs["nervi_format"] == "renders" and group.attrs["version"] == 1
    assert (group["images"].chunks, group["images"].shards) == ((1, HEIGHT, WIDTH, 3), (7, HEIGHT, WIDTH, 3))
    assert (group["masks"].chunks, group["masks"].shards) == ((1, HEIGHT, WIDTH), (7, HEIGHT, WIDTH))
    assert group["images"].compressors[0].cname.value == "zstd"
    assert (result.count, result.shards, result.written, result.skipped) == (COUNT, 5, COUNT, 0)
    assert result.raw_bytes == COUNT * HEIGHT * WIDTH * 3 and 0 < result.stored_bytes < result.raw_bytes
    assert "img/s" in result.summary() and "MB/s" in result.summary()
    assert not partial_path(tmp_path / "r.zarr").exists()
    assert not (tmp_path / "r.zarr" / ".ingest").exists()


def test_default_shard_size_is_about_64_mb_of_pixels(tmp_path):
    assert default_shard_size(10_000, 1024, 1024) == 21
    assert default_shard_size(5, 8192, 8192) == 1
    result = ingest(make_source(), tmp_path / "r.zarr", progress=False)
    assert result.shards == 1 and RenderStore.open(tmp_path / "r.zarr").shard_size == COUNT


def test_rgba_is_composited_on_the_background_and_masked_by_alpha(tmp_path):
    background = (10, 200, 30)
    source = make_source(alpha=True, background=background)
    ingest(source, tmp_path / "r.zarr", shard_size=8, workers=1, progress=False)
    images, masks = RenderStore.open(tmp_path / "r.zarr").read(range(COUNT))
    a = source.alpha[..., None].astype(float)
    expected = np.rint((source.rgb * a + np.asarray(background) * (255 - a)) / 255)
    assert np.array_equal(images, expected.astype(np.uint8))
    assert np.array_equal(images[:, 0, 0], np.broadcast_to(background, (COUNT, 3)))  # alpha 0
    assert np.array_equal(images[:, 0, 1], source.rgb[:, 0, 1])  # alpha 255
    assert np.array_equal(masks, (source.alpha > 0).astype(np.uint8))


@pytest.mark.parametrize("tolerance", [0, 2])
def test_masks_of_rgb_use_the_given_background_and_tolerance(tmp_path, tolerance):
    background = (40, 50, 60)
    source = make_source(background=background, noise=2, tolerance=tolerance)
    ingest(source, tmp_path / "r.zarr", shard_size=10, workers=1, progress=False)
    images, masks = RenderStore.open(tmp_path / "r.zarr").read(range(COUNT))
    off = (np.abs(source.rgb.astype(int) - background) > tolerance).any(axis=-1)
    assert np.array_equal(masks, (off | object_mask().astype(bool)).astype(np.uint8))
    noise_counts = masks.sum() > COUNT * object_mask().sum()
    assert noise_counts == (tolerance < 2)  # the ±2 noise is foreground only below tolerance 2
    assert np.array_equal(images, source.rgb)


def test_background_is_detected_from_the_image_borders(tmp_path):
    source = make_source(background=(12, 34, 56), declared=False)
    ingest(source, tmp_path / "r.zarr", workers=1, progress=False)
    store = RenderStore.open(tmp_path / "r.zarr")
    assert store.background == (12, 34, 56)
    assert np.array_equal(store.read([0, 29])[1], np.stack([object_mask()] * 2))


def test_background_detection_fails_clearly_without_a_majority_colour(tmp_path):
    source = make_source(background=(128, 128, 128), noise=60, declared=False)
    with pytest.raises(SourceError, match=r"^array test source: cannot detect the background colour"):
        ingest(source, tmp_path / "r.zarr", progress=False)
    assert not (tmp_path / "r.zarr").exists()


# ----------------------------------------------------------------------------------------------
# Parallelism, resume, idempotence, errors


def test_two_workers_write_the_same_store_as_one(tmp_path):
    source = make_source()
    ingest(source, tmp_path / "one.zarr", shard_size=4, workers=1, progress=False)
    result = ingest(source, tmp_path / "two.zarr", shard_size=4, workers=2, progress=False)
    assert result.written == COUNT
    assert tree(tmp_path / "one.zarr") == tree(tmp_path / "two.zarr")


def test_a_killed_ingest_resumes_to_the_same_store_skipping_finished_shards(tmp_path):
    shard = 4
    killed = run_python(f"""
        from test_ingest import make_source
        from nervi_hpc.stages.ingest.run import ingest
        ingest(make_source(exit_at=13), {str(tmp_path / "r.zarr")!r}, shard_size={shard}, workers=1,
               progress=False)
    """)
    assert killed.returncode == 9, killed.stderr
    partial = partial_path(tmp_path / "r.zarr")
    assert sorted(p.name for p in (partial / ".ingest").glob("*.done")) == \
        ["shard-00000.done", "shard-00001.done", "shard-00002.done"]
    assert not (tmp_path / "r.zarr").exists()
    finished = {name: f.stat().st_mtime_ns for name in ("images/c/0/0/0/0", "images/c/2/0/0/0")
                for f in [partial / name]}

    result = ingest(make_source(), tmp_path / "r.zarr", shard_size=shard, workers=1, progress=False)
    assert (result.skipped, result.written) == (3 * shard, COUNT - 3 * shard)
    assert {name: (tmp_path / "r.zarr" / name).stat().st_mtime_ns for name in finished} == finished
    ingest(make_source(), tmp_path / "straight.zarr", shard_size=shard, workers=1, progress=False)
    assert tree(tmp_path / "r.zarr") == tree(tmp_path / "straight.zarr")


def test_rerun_of_a_complete_store_is_a_no_op(tmp_path):
    ingest(make_source(), tmp_path / "r.zarr", shard_size=8, workers=1, progress=False)
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "r.zarr").rglob("*")}
    result = ingest(make_source(), tmp_path / "r.zarr", shard_size=8, workers=1, progress=False)
    assert (result.written, result.skipped) == (0, COUNT)
    assert "already complete" in result.summary()
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "r.zarr").rglob("*")} == before


def test_a_source_error_in_a_worker_reaches_the_caller_and_keeps_finished_shards(tmp_path):
    with pytest.raises(SourceError) as info:
        ingest(make_source(fail_at=13), tmp_path / "r.zarr", shard_size=4, workers=2, progress=False)
    assert str(info.value) == "img_013.png: corrupt or unreadable image (truncated)"
    assert not (tmp_path / "r.zarr").exists()
    done = {p.name for p in (partial_path(tmp_path / "r.zarr") / ".ingest").glob("*.done")}
    assert {"shard-00000.done", "shard-00001.done", "shard-00002.done"} <= done
    assert "shard-00003.done" not in done
    result = ingest(make_source(), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    starts = [4 * int(name[6:11]) for name in done]
    assert result.skipped == sum(min(4, COUNT - start) for start in starts)
    assert RenderStore.open(tmp_path / "r.zarr").count == COUNT


def test_a_worker_that_dies_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="an ingest worker process died .*re-run to resume"):
        ingest(make_source(exit_at=13), tmp_path / "r.zarr", shard_size=4, workers=2, progress=False)
    assert not (tmp_path / "r.zarr").exists()


def test_a_partial_of_another_source_is_discarded(tmp_path, capsys):
    with pytest.raises(SourceError):
        ingest(make_source(fail_at=9), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    other = make_source(seed=1, description="another source")
    result = ingest(other, tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    assert "discarding" in capsys.readouterr().err
    assert (result.skipped, result.written) == (0, COUNT)
    assert np.array_equal(RenderStore.open(tmp_path / "r.zarr").read(range(COUNT))[0], other.rgb)


def test_refuses_to_overwrite_another_complete_store_or_a_foreign_folder(tmp_path):
    ingest(make_source(), tmp_path / "r.zarr", shard_size=8, workers=1, progress=False)
    before = tree(tmp_path / "r.zarr")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        ingest(make_source(seed=1, description="another"), tmp_path / "r.zarr", workers=1, progress=False)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        ingest(make_source(), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    assert tree(tmp_path / "r.zarr") == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a nervi renders store; refusing to overwrite"):
        ingest(make_source(), tmp_path / "mine", workers=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_contact_sheet_is_written(tmp_path):
    ingest(make_source(), tmp_path / "r.zarr", workers=1, progress=False, contact_sheet=tmp_path / "sheet.png")
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 8 * WIDTH and sheet.height > 4 * HEIGHT


# ----------------------------------------------------------------------------------------------
# RenderStore


def test_open_errors_are_one_line_store_errors(tmp_path):
    def fails(path, fragment):
        with pytest.raises(StoreError) as info:
            RenderStore.open(path)
        assert fragment in str(info.value) and "\n" not in str(info.value)

    fails(tmp_path / "none.zarr", "no such store")
    (tmp_path / "plain").mkdir()
    fails(tmp_path / "plain", "not a nervi renders store")
    with pytest.raises(SourceError):
        ingest(make_source(fail_at=20), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    fails(tmp_path / "r.zarr", "unfinished ingest")
    fails(partial_path(tmp_path / "r.zarr"), "unfinished ingest")
    ingest(make_source(), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    zarr.open_group(str(tmp_path / "r.zarr"), mode="r+").update_attributes({"version": 2})
    fails(tmp_path / "r.zarr", "newer")


def test_open_reads_no_pixels(tmp_path, monkeypatch):
    ingest(make_source(), tmp_path / "r.zarr", shard_size=4, workers=1, progress=False)
    keys = []
    get = zarr.storage.LocalStore.get

    async def recording_get(self, key, *args, **kwargs):
        keys.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", recording_get)
    store = RenderStore.open(tmp_path / "r.zarr")
    assert store.params.shape == (COUNT, 3)
    assert keys and not [k for k in keys if k.startswith(("images/c", "masks/c"))]
    store.read([5])
    assert [k for k in keys if k.startswith("images/c")]


def test_read_returns_the_order_asked_reading_sorted_runs_shard_by_shard(tmp_path):
    source = make_source()
    ingest(source, tmp_path / "r.zarr", shard_size=7, workers=1, progress=False)
    store = RenderStore.open(tmp_path / "r.zarr")
    reads = []

    class Recording:
        def __init__(self, array):
            self.array = array

        def __getitem__(self, selection):
            reads.append((selection.start, selection.stop))
            return self.array[selection]

    store._images = Recording(store._images)
    asked = [29, 0, 8, 7, 14, 3, 8, 5, 6]
    images, masks = store.read(asked)
    assert np.array_equal(images, source.rgb[asked])
    assert np.array_equal(masks, np.broadcast_to(object_mask(), (len(asked), HEIGHT, WIDTH)))
    assert reads == [(0, 1), (3, 4), (5, 7), (7, 9), (14, 15), (29, 30)]  # 6 | 7 is a shard boundary
    assert [store.shard_of(i) for i in (0, 6, 7, 29)] == [0, 0, 1, 4]
    with pytest.raises(IndexError, match="out of range"):
        store.read([30])


# ----------------------------------------------------------------------------------------------
# MPI


def mpiexec() -> str:
    found = Path(sys.executable).parent / "mpiexec"
    launcher = str(found) if found.exists() else shutil.which("mpiexec")
    if launcher is None:
        pytest.skip("no mpiexec found (pip install mpich, or load the site's MPI module)")
    return launcher


MPI_PROGRAM = """
    import os, sys
    from test_ingest import make_source
    from nervi_hpc.errors import NerviError
    from nervi_hpc.stages.ingest.run import ingest
    source = make_source(fail_at=int(sys.argv[2]) if len(sys.argv) > 2 else None)
    try:
        ingest(source, sys.argv[1], shard_size=4, progress=False)
    except NerviError as e:
        sys.exit(f"error: {e}")
    with open(f"{sys.argv[1]}.read-by-{os.getpid()}", "w") as log:
        log.write(" ".join(map(str, sorted(set(source.seen)))))
"""


@pytest.mark.mpi
def test_mpi_ranks_write_the_same_store_as_one_process(tmp_path):
    ran = run_python(MPI_PROGRAM, mpiexec(), "-n", "2", args=[tmp_path / "mpi.zarr"])
    assert ran.returncode == 0, ran.stderr
    reads = sorted([int(i) for i in log.read_text().split()] for log in tmp_path.glob("mpi.zarr.read-by-*"))
    assert reads == [[i for i in range(COUNT) if i // 4 % 2 == rank] for rank in (0, 1)]  # shards r, r+2, …
    ingest(make_source(), tmp_path / "one.zarr", shard_size=4, workers=1, progress=False)
    assert tree(tmp_path / "mpi.zarr") == tree(tmp_path / "one.zarr")


@pytest.mark.mpi
def test_an_error_on_one_mpi_rank_stops_every_rank_with_its_message(tmp_path):
    ran = run_python(MPI_PROGRAM, mpiexec(), "-n", "2", args=[tmp_path / "mpi.zarr", 5])  # shard 1: rank 1
    assert ran.returncode != 0
    assert ran.stderr.count("error: img_005.png: corrupt or unreadable image (truncated)") == 2, ran.stderr
    assert not (tmp_path / "mpi.zarr").exists()
