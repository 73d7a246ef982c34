"""Training from the cache: a dataset that adds each sample's cached teacher outputs (replaying the cached
view's augmentation), and the reader the Distiller takes its teacher outputs from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from kdforge.app.cache.encoding import decode_fields
from kdforge.app.cache.store import CacheReader

Outputs = dict[str, torch.Tensor]


class CachedTeacherDataset(Dataset):
    """Samples of `base` (a `BatchDict`) with ``"teachers"``: ``{teacher: {output key: {part: tensor}}}``.

    Indexed by ``index`` or ``(index, view)`` (a `ResumableSampler` with ``views`` yields pairs): a replayed
    pipeline re-applies that view's cached augmentation parameters, so the student's input is exactly the
    image the teacher saw.
    """

    def __init__(self, base: Any, reader: CacheReader) -> None:
        self.base, self.reader = base, reader

    def __len__(self) -> int:
        return len(self.base)

    @property
    def targets(self) -> list[int]:
        return self.base.targets

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, view = key if isinstance(key, tuple) else (key, 0)
        row = index * self.reader.views + view
        item = self.base.view(index, self.reader.params(row)) if self.reader.replay else self.base[index]
        item["teachers"] = self.reader.row(row)
        return item


class TeacherCache:
    """The Distiller's teacher outputs, from ``batch["teachers"]`` (see `kdforge.app.cache.encoding`).

    `names` are the teachers in the config's order: the first is every term's default teacher.
    """

    def __init__(self, reader: CacheReader, names: list[str]) -> None:
        self.reader, self.names = reader, names
        manifest = reader.manifest
        self.token_layouts = [tuple(layout) for layout in manifest["token_layouts"].values() if layout]
        self.classes: int = manifest["classes"]
        self.views: int = reader.views

    def outputs(self, batch: dict[str, Any], names: Sequence[str]) -> dict[str, Outputs]:
        device = batch["index"].device
        return {name: decode_fields(batch["teachers"][name], self.classes, device) for name in names}
