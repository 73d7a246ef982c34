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
