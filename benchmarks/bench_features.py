"""Label-free feature distillation on the bundled digits, with multi-crop: what the student's embedding gains
and what the teacher cache saves, in one process.

1. A ResNet-18 teacher is trained as a classifier on the digits (image folders, 32 px), then used headless: its
   pooled embedding and its layer3 feature map are the targets.
2. k-NN accuracy (weighted vote, k = 20, memory: the train split) of the teacher, of the student at its random
   initialisation, and of the student after label-free multi-crop distillation (2 global + 4 local crops,
   cosine on the embedding and on the feature maps), with a live teacher and from the teacher cache.
3. Speed: the live run and the cached run alternate for ``--rounds`` rounds (the cache is built once, before);
   the median per-round ratio of their training samples/s is reported.

Run:  .venv/bin/python benchmarks/bench_features.py [--epochs 6] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdforge.app.build import build_task
from kdforge.app.pipeline import build_cache, train
from kdforge.core.config import RunConfig, validate_config
from kdforge.data.digits import write_image_folders
from kdforge.engine.evaluate import evaluate
from kdforge.models.build import build_model, tapped_model

TEACHER = {"source": "timm", "name": "resnet18"}
STUDENT = {"source": "timm", "name": "test_resnet"}
QUIET = {"progress": False, "verbose": False, "report": False, "loggers": [], "diagnostics_every_steps": 0}


def teacher_config(root: Path, out: Path, epochs: int) -> RunConfig:
    return validate_config(
        {
            "teacher": None,
            "student": TEACHER,
            "data": {"root": str(root), "image_size": 32, "batch_size": 64, "num_workers": 0},
            "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 1e-3}},
            "output": {"dir": str(out), "name": "teacher"},
            "log": QUIET,
        }
    )


def features_config(
    root: Path, out: Path, checkpoint: Path, epochs: int, name: str, simple: bool, **extra: Any
) -> RunConfig:
    return validate_config(
        {
            "task": "features",
            "teacher": {**TEACHER, "checkpoint": str(checkpoint), "taps": {"map": "layer3"}},
            "student": {**STUDENT, "taps": {"map": "layer3"}},
            "data": {
                "root": str(root),
                "image_size": 32,
                "batch_size": 32,
                "num_workers": 0,
                "multicrop": {"global_crops": 2, "local_crops": 4, "local_size": 16, "simple": simple},
            },
            "distill": {
                "terms": [
                    {"loss": "cosine", "student": "embedding", "teacher": "embedding"},
                    {"loss": "cosine", "weight": 0.5, "student": "map", "teacher": "map"},
                ]
            },
            "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 2e-3}},
            "output": {"dir": str(out), "name": name},
            "log": QUIET,
            **extra,
        }
    )


def initial_student_knn(config: RunConfig) -> float:
    """k-NN accuracy of the student as the distilled runs start it (same seed, no training)."""
    from torch.utils.data import DataLoader

    torch.manual_seed(config.seed)
    task = build_task(config)
    val = task.eval_dataset()
    net = tapped_model(build_model(config.student, task.model_classes), config.student, {}, task.to_outputs)
    loader = DataLoader(val, batch_size=128)
    return evaluate(net, loader, task, torch.device("cpu"))["val/knn_acc1"]


def train_speed(run_dir: Path) -> dict[str, float]:
    """Median samples/s and ms per step in each part (data, teacher, student, optimizer) over the train records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    keys = ["samples_per_s", *(f"time/{part}_ms" for part in ("data", "teacher", "student", "optimizer"))]
    return {key: statistics.median(r[key] for r in train) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--simple", action="store_true", help="multi-crop with crop and flip only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = write_image_folders(work / "digits", image_size=32)
        teacher = train(teacher_config(root, work / "runs", args.teacher_epochs))
        checkpoint = teacher.run_dir / "checkpoints" / "best.pt"
        print(f"teacher (supervised, {args.teacher_epochs} epochs): val/acc1 {teacher.best_metrics['val/acc1']:.2f}")
        cache = {"enabled": True, "dir": str(work / "cache"), "views": args.views}
        common = (root, work / "runs", checkpoint, args.epochs)
        cached_config = features_config(*common, "cached", args.simple, cache=cache)
        tic = time.perf_counter()
        build_cache(cached_config)
        print(f"cache build ({args.views} multi-crop views per image): {time.perf_counter() - tic:.1f} s")
        live_config = features_config(*common, "live", args.simple)
        speeds: dict[str, list[dict[str, float]]] = {"live": [], "cached": []}
        results = {}
        for _ in range(args.rounds):
            for name, config in (("live", live_config), ("cached", cached_config)):
                result = train(config)
                speeds[name].append(train_speed(result.run_dir))
                results[name] = result
        pairs = zip(speeds["cached"], speeds["live"], strict=True)
        ratios = [c["samples_per_s"] / live["samples_per_s"] for c, live in pairs]
        print(
            f"k-NN val/knn_acc1: teacher {results['live'].teacher_metrics['val/knn_acc1']:.2f}, "
            f"student at init {initial_student_knn(live_config):.2f}, "
            f"distilled live {results['live'].best_metrics['val/knn_acc1']:.2f}, "
            f"distilled from the cache {results['cached'].best_metrics['val/knn_acc1']:.2f} "
            f"({args.epochs} epochs, label-free)"
        )
        for name, rounds in speeds.items():
            split = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            parts = ", ".join(f"{key[5:-3]} {value:.0f}" for key, value in split.items() if key.startswith("time/"))
            print(f"{name}: {split['samples_per_s']:.1f} samples/s; ms per step: {parts}")
        print(f"cached / live samples/s = {statistics.median(ratios):.2f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
