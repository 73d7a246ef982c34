"""ResumableSampler: a permutation fixed by (seed, epoch) that can start part-way through an epoch."""

from __future__ import annotations

from kdforge.data.sampler import ResumableSampler


def _order(length: int = 50, seed: int = 0, epoch: int = 0) -> list[int]:
    sampler = ResumableSampler(length, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_same_seed_and_epoch_give_the_same_permutation() -> None:
    first, second = _order(seed=3, epoch=2), _order(seed=3, epoch=2)
    assert first == second
    assert sorted(first) == list(range(50))  # every index exactly once
    assert first != list(range(50))  # shuffled


def test_iterating_twice_gives_the_same_order() -> None:
    sampler = ResumableSampler(20, seed=1)
    sampler.set_epoch(4)
    assert list(sampler) == list(sampler)


def test_other_epochs_and_seeds_give_other_permutations() -> None:
    orders = {tuple(_order(seed=0, epoch=e)) for e in range(4)}
    assert len(orders) == 4
    assert _order(seed=0, epoch=1) != _order(seed=1, epoch=1)


def test_start_skips_what_was_seen_once_then_resets() -> None:
    sampler = ResumableSampler(30, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=12)
    assert len(sampler) == 18
    assert list(sampler) == full[12:]
    assert len(sampler) == 30  # the next epoch is whole again
    assert list(sampler) == full


def test_len_is_the_dataset_length() -> None:
    sampler = ResumableSampler(17)
    assert len(sampler) == 17 == len(list(sampler))


def test_no_shuffle_is_the_identity_order() -> None:
    sampler = ResumableSampler(6, shuffle=False, seed=9)
    sampler.set_epoch(3, start=2)
    assert list(sampler) == [2, 3, 4, 5]
    assert list(sampler) == list(range(6))


# --- views: (index, view) pairs for a teacher cache with several views per sample ------------------


def _pairs(length: int = 40, views: int = 3, seed: int = 0, epoch: int = 0) -> list[tuple[int, int]]:
    sampler = ResumableSampler(length, seed=seed, views=views)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_views_yield_each_index_once_with_a_view_in_range() -> None:
    pairs = _pairs()
    assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in pairs)
    assert sorted(index for index, _ in pairs) == list(range(40))
    assert {view for _, view in pairs} == {0, 1, 2}  # every view is used somewhere, none out of range


def test_views_are_fixed_by_seed_and_epoch() -> None:
    assert _pairs(seed=2, epoch=5) == _pairs(seed=2, epoch=5)
    assert _pairs(seed=2, epoch=5) != _pairs(seed=2, epoch=6)
    assert _pairs(seed=2, epoch=5) != _pairs(seed=3, epoch=5)
    views = {tuple(view for _, view in sorted(_pairs(epoch=e))) for e in range(4)}
    assert len(views) == 4  # a sample is not shown the same view every epoch


def test_a_resumed_epoch_with_views_is_the_tail_of_the_full_epoch() -> None:
    sampler = ResumableSampler(25, seed=4, views=5)
    sampler.set_epoch(3)
    full = list(sampler)
    for start in (0, 1, 11, 24, 25):
        sampler.set_epoch(3, start=start)
        assert len(sampler) == 25 - start
        assert list(sampler) == full[start:]
    assert list(sampler) == full  # the start applied once


def test_no_shuffle_with_views_keeps_the_index_order() -> None:
    sampler = ResumableSampler(6, shuffle=False, seed=1, views=2)
    pairs = list(sampler)
    assert [index for index, _ in pairs] == list(range(6)) and all(view in (0, 1) for _, view in pairs)


def test_one_view_yields_plain_indices() -> None:
    assert all(isinstance(index, int) for index in ResumableSampler(5, views=1))
