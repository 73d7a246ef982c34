"""What a teacher cache was built from, so a cache built for other settings is refused, never used.

Five parts, each compared on its own so the refusal can say what changed: the teachers' weights (the
checkpoint file's sha256, or the seed of a randomly initialised teacher) and how they are built, their
taps, the input pipeline (data settings, transforms, views), the dataset listing (paths, sizes and
modification times of the files, or the content of sampled items for in-memory datasets) and the
precision (storage dtype, top-k, teacher dtype and autocast mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from kdforge.core.config import RunConfig

CONTENT_SAMPLES = 64  # items hashed from a dataset without a file listing
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object addresses in reprs change every run
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def fingerprint(config: RunConfig, raw: Dataset, views: int, amp: str) -> dict[str, Any]:
    """The cache's fingerprint: ``{part: plain data}`` (see the module docstring).

    Args:
        config: the run config.
        raw: the training dataset as loaded (before kdforge's dict wrapper).
        views: cached views per sample.
        amp: the resolved autocast mode the teacher runs under.
    """
    specs = config.teacher_specs()
    return {
        "teacher weights": {name: _teacher(spec, config.seed, _headless(config)) for name, spec in specs.items()},
        "taps": {
            name: {**spec.taps, **(config.distill.taps.teacher if name == "teacher" else {})}
            for name, spec in specs.items()
        },
        "input pipeline": {
            "data": config.data.model_dump(
                mode="json",
                include={
                    "dataset",
                    "factory",
                    "kwargs",
                    "image_size",
                    "in_chans",
                    "mean",
                    "std",
                    "augment",
                    "split_seed",
                    *(["multicrop"] if config.data.multicrop else []),  # absent when off: older caches stay valid
                },
            ),
            "teacher input": {
                name: spec.input.model_dump(mode="json") if spec.input else None for name, spec in specs.items()
            },
            "transform": _ADDRESS.sub("", repr(getattr(raw, "transform", None))),
            "views": views,
            "view seed": config.cache.seed,
        },
        "dataset listing": dataset_listing(raw),
        "precision": {
            "storage": config.cache.dtype,
            "logits_topk": None if config.cache.full_logits else config.cache.logits_topk,
            "teacher dtype": config.teacher_runtime.dtype,
            "autocast": amp,
        },
    }


def _headless(config: RunConfig) -> bool:
    from kdforge.app.checks import task_class

    return task_class(config.task).embeds_only


def _teacher(spec: Any, seed: int, headless: bool) -> dict[str, Any]:
    # forward and headless are listed only when set, so caches built before they existed stay valid
    fields = {"source", "name", "kwargs", "num_classes", "checkpoint_key", *(["forward"] if spec.forward else [])}
    built = {**spec.model_dump(mode="json", include=fields), **({"headless": True} if headless else {})}
    if spec.checkpoint:
        return {**built, "checkpoint sha256": file_sha256(spec.checkpoint)}
    return {**built, "random init seed": seed}


def dataset_listing(raw: Dataset) -> dict[str, Any]:
    """Files (path, class, size, mtime) of a listing dataset (ImageFolder's ``samples``), else the content
    of up to `CONTENT_SAMPLES` evenly spaced items, hashed."""
    samples = getattr(raw, "samples", None)
    digest = hashlib.sha256()
    if samples is not None:
        for path, target in samples:
            stat = os.stat(path)
            digest.update(f"{path}\0{target}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"files": len(samples), "sha256": digest.hexdigest()}
    count = len(raw)
    step = max(1, count // CONTENT_SAMPLES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a dataset that draws random views hashes the same views whatever the run's seed
        for index in range(0, count, step):
            digest.update(_item_bytes(raw[index]))
    return {"items": count, "sampled": len(range(0, count, step)), "sha256": digest.hexdigest()}


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, torch.Tensor):
        return item.detach().cpu().contiguous().numpy().tobytes()
    if isinstance(item, dict):
        return b"".join(k.encode() + _item_bytes(v) for k, v in sorted(item.items()))
    if isinstance(item, (tuple, list)):
        return b"".join(_item_bytes(v) for v in item)
    return repr(item).encode()


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one line per changed part, with the values that changed."""
    lines = []
    for part in new:
        if _canonical(old.get(part)) != _canonical(new[part]):
            lines.append(f"{part}: {_difference(old.get(part), new[part])}")
    return lines


def _difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in dict.fromkeys([*old, *new]) if _canonical(old.get(k)) != _canonical(new.get(k))]
        return "; ".join(_difference(old.get(k), new.get(k), f"{prefix}{k}.") for k in keys)
    return f"{prefix.rstrip('.') or 'value'} was {_short(old)}, now {_short(new)}"


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256 digest: its start tells them apart
        return value[:12]
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
