"""gather_varying_rows: the identity in one process; rank-ordered rows from gloo processes of uneven shares."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdforge.core.distributed import World

ROWS = (3, 1, 0, None)  # rank 0 has 3 rows, rank 1 one (an uneven val split), rank 2 none, rank 3 no tensor at all


def _share(rank: int) -> torch.Tensor | None:
    """Rank `rank`'s rows, (ROWS[rank], 2): row r of rank k is [10k + r, -(10k + r)]; None for a process that
    evaluated no batch (it still joins the gather)."""
    if ROWS[rank] is None:
        return None
    values = torch.arange(ROWS[rank], dtype=torch.float64) + 10 * rank
    return torch.stack([values, -values], dim=1)


def test_without_a_process_group_it_is_the_identity() -> None:
    rows = _share(0)
    assert World().gather_varying_rows(rows) is rows


def _gather(rank: int, store: str, out: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(World.joined().gather_varying_rows(_share(rank)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_processes_with_different_row_counts_gather_in_rank_order(tmp_path: Path) -> None:
    world = len(ROWS)
    # fork, not spawn: the children need not import torch again (seconds each), and they run CPU collectives only
    args = (str(tmp_path / "store"), str(tmp_path / "rows"), world)
    mp.start_processes(_gather, args=args, nprocs=world, start_method="fork")
    expected = torch.tensor([[0.0, -0.0], [1.0, -1.0], [2.0, -2.0], [10.0, -10.0]], dtype=torch.float64)
    for rank in range(world):
        gathered = torch.load(tmp_path / f"rows.{rank}")
        assert gathered.dtype == torch.float64 and torch.equal(gathered, expected)
