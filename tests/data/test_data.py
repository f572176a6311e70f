"""The shard-aware sampler and the streaming dataset."""

import numpy as np
import pytest

from nervi_hpc.data.dataset import ShardAwareSampler, normalize


def epoch_batches(world, **kw):
    return [list(ShardAwareSampler(rank=r, world_size=world, **kw)) for r in range(world)]


@pytest.mark.parametrize("count, shard, batch, world", [(100, 7, 8, 1), (100, 7, 8, 3), (37, 5, 4, 4),
                                                       (10, 64, 4, 2), (64, 8, 64, 2)])
def test_every_image_exactly_once_per_epoch_across_ranks(count, shard, batch, world):
    for epoch in range(3):
        parts = epoch_batches(world, count=count, shard_size=shard, batch_size=batch, epoch=epoch)
        assert len({len(p) for p in parts}) == 1  # same number of steps on every rank
        seen = [i for part in parts for b in part for i in b]
        assert sorted(seen) == list(range(count))
        assert all(len(b) > 0 for part in parts for b in part)


def test_ranks_split_the_single_process_global_batches():
    kw = dict(count=96, shard_size=8, batch_size=12, seed=3, epoch=2)
    single = list(ShardAwareSampler(**kw))
    parts = epoch_batches(4, **kw)
    for step, global_batch in enumerate(single):
        assert sorted(global_batch) == sorted(i for part in parts for i in part[step])


def test_order_is_reproducible_from_seed_and_epoch():
    kw = dict(count=200, shard_size=16, batch_size=8)
    assert list(ShardAwareSampler(seed=1, epoch=4, **kw)) == list(ShardAwareSampler(seed=1, epoch=4, **kw))
    assert list(ShardAwareSampler(seed=1, epoch=4, **kw)) != list(ShardAwareSampler(seed=1, epoch=5, **kw))
    assert list(ShardAwareSampler(seed=1, epoch=4, **kw)) != list(ShardAwareSampler(seed=2, epoch=4, **kw))


def test_resume_from_a_batch_continues_the_same_order():
    sampler = ShardAwareSampler(count=120, shard_size=10, batch_size=8, epoch=1)
    full = list(sampler)
    sampler.set_epoch(1, start_batch=5)
    assert list(sampler) == full[5:] and len(sampler) == len(full) - 5


def test_reads_stay_within_a_window_of_shards():
    shard, window = 16, 4
    sampler = ShardAwareSampler(count=512, shard_size=shard, batch_size=8, window=window)
    for batch in sampler:
        assert len({i // shard for i in batch}) <= window
    order = sampler.epoch_order()
    for start in range(0, 512, shard * window):  # each window covers `window` whole shards
        assert len({i // shard for i in order[start:start + shard * window]}) == window


def test_a_global_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="cannot feed 4 ranks"):
        ShardAwareSampler(count=100, shard_size=10, batch_size=2, world_size=4)


def test_normalize_maps_ranges_to_unit_interval():
    params = np.array([[0.0, 0.0, 5.0], [3.0, 180.0, 5.0], [1.5, 90.0, 5.0]])
    out = normalize(params, [[0, 3], [0, 180], [5, 5]])
    np.testing.assert_allclose(out, [[-1, -1, 0], [1, 1, 0], [0, 0, 0]], atol=1e-6)
    assert out.dtype == np.float32
