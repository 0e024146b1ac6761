"""The one length grouping: seeded per epoch, every index once, batches of similar lengths (much less padding than
random batches), the same global batches sharded across processes; evaluation batches sorted by length.
(The length-grouping test moved here from tests/data when data's own copy was deleted.)"""
import pytest

from minift.train.batching import BatchPlan, epoch_order, eval_batches, shard

LENGTHS = [(i * 37) % 101 for i in range(1000)]


def padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_every_index_once_and_group_lengths():
    batches = epoch_order(LENGTHS, batch_size=16, seed=3, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == 63 and all(len(b) == 16 for b in batches if len(b) != 1000 % 16)
    assert batches == epoch_order(LENGTHS, 16, seed=3, epoch=0, group_by_length=True)  # seeded
    assert batches != epoch_order(LENGTHS, 16, seed=4, epoch=0, group_by_length=True)
    assert batches != epoch_order(LENGTHS, 16, seed=3, epoch=1, group_by_length=True)  # every epoch differs
    random_batches = epoch_order(LENGTHS, 16, seed=3, epoch=0, group_by_length=False)
    assert sorted(i for b in random_batches for i in b) == list(range(1000))
    assert padded_tokens(batches, LENGTHS) < 0.7 * padded_tokens(random_batches, LENGTHS)


def test_unshuffled_order_keeps_the_data_order():
    assert epoch_order([3, 1, 2, 5, 4], 2, seed=0, epoch=0, group_by_length=True, shuffle=False) == [[0, 1], [2, 3],
                                                                                                    [4]]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_of_every_process_make_up_the_single_process_batches(world):
    """N processes × batch B see exactly the global batches of one process × batch N·B (possibly an empty shard)."""
    single = BatchPlan(LENGTHS[:50], lambda idx: idx, batch_size=4 * world, seed=1)
    plans = [BatchPlan(LENGTHS[:50], lambda idx: idx, batch_size=4, seed=1, rank=r, world_size=world)
             for r in range(world)]
    assert all(len(p) == len(single) for p in plans)
    for epoch in (0, 1):
        shards = [p.epoch(epoch) for p in plans]
        for step, global_batch in enumerate(single.epoch(epoch)):
            assert [i for s in shards for i in s[step]] == global_batch
    assert shard([1, 2, 3], 0, 2) == [1, 2] and shard([1, 2, 3], 1, 2) == [3] and shard([7], 1, 2) == []


def test_eval_batches_are_sorted_by_length_and_keep_every_feature():
    features = [{"input_ids": [0] * n} for n in (5, 2, 9, 2, 7)]
    batches = eval_batches(features, lambda rows: [len(r["input_ids"]) for r in rows], 2)
    assert batches == [[2, 2], [5, 7], [9]]


def test_an_empty_training_split_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        BatchPlan([], lambda idx: idx, 4, seed=0)
