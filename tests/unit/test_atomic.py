"""atomic_write: the target is either the old file or the whole new one, and no temporary file stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdforge.core.atomic import atomic_write


def test_writes_the_file_creates_parents_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    returned = atomic_write(path, lambda tmp: Path(tmp).write_text("new"))
    assert returned == path
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    atomic_write(path, lambda tmp: Path(tmp).write_text("new"))
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_interrupt_during_the_write_is_cleaned_up_too(tmp_path: Path) -> None:
    def interrupted(tmp: str) -> None:
        Path(tmp).write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from kdforge.core.atomic import atomic_write

    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "ckpt.pt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644
