"""Speed of distillation in one process: a hand-written PyTorch KD loop, kdforge with the live teacher,
kdforge reading the teacher cache, and kdforge training the student alone; plus the cache's size.

Every kdforge loop is the real ``Trainer._train_epoch`` path built by ``kdforge.app.build.build_run``
(``run_dir=None``, no progress bar, no TensorBoard); evaluation is never run. All loops train identical
student copies on identical in-memory data (``num_workers=0``) with the same optimizer and schedule:

  hand-written   teacher forward under ``torch.inference_mode``, student forward,
                 ``(1 - alpha) * CE + alpha * T^2 * KL(batchmean)`` in float32, backward, AdamW, cosine step;
  kdforge live   the same work through kdforge (distill.terms: kd);
  kdforge cache  the teacher's top-k logits read from a cache built once before timing (the build is timed
                 separately); the teacher network is never built;
  student alone  kdforge with no teacher (task loss only).

After warm-up blocks, blocks of ``--steps`` steps run for ``--rounds`` rounds, the order rotating every
round so a slow drift of the machine favours no loop; medians of per-round ratios are reported.

Run:  .venv/bin/python benchmarks/bench_speed.py [--threads 1] [--steps 10] [--rounds 5] [--topk 32]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import itertools
import math
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdforge.app.build import build_loaders, build_run
from kdforge.app.cache.build import cache_report
from kdforge.core.config import RunConfig, validate_config
from kdforge.core.context import Context, setup_process
from kdforge.engine.evaluate import to_device
from kdforge.engine.trainer import Trainer

ALPHA = 0.7  # weight of the KD term; the task (CE) loss gets 1 - ALPHA
TEMPERATURE = 4.0
LR = 1e-3
WEIGHT_DECAY = 0.05
BETAS = (0.9, 0.999)


# ---------------------------------------------------------------- data
class SyntheticImages(Dataset):
    """Random images and labels held in memory: ``(input, target)`` samples, as torchvision gives."""

    def __init__(self, size: int, image_size: int, num_classes: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.targets = torch.randint(0, num_classes, (size,), generator=generator).tolist()
        self.classes = [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inputs[index], self.targets[index]


def make_dataset(split: str, size: int, val_size: int, image_size: int, num_classes: int) -> Dataset:
    """kdforge ``import`` dataset factory (``data.factory: <this module>:make_dataset``)."""
    if split == "train":
        return SyntheticImages(size, image_size, num_classes, seed=0)
    return SyntheticImages(val_size, image_size, num_classes, seed=1)


# ---------------------------------------------------------------- setup
MODES = ("hand-written", "kdforge live", "kdforge cache", "student alone")


def bench_config(args: argparse.Namespace, blocks: int, mode: str, cache_dir: str) -> RunConfig:
    """The run config of one kdforge loop: ``live``, ``cache`` or ``alone``."""
    kd = mode != "alone"
    return validate_config(
        {
            "seed": 0,
            "device": args.device,
            "threads": args.threads,
            "teacher": {"source": "timm", "name": args.teacher} if kd else None,
            "student": {"source": "timm", "name": args.student},
            "data": {
                "dataset": "import",
                "factory": f"{__name__}:make_dataset",
                "kwargs": {
                    "size": args.steps * args.batch_size,
                    "val_size": args.batch_size,
                    "image_size": args.image_size,
                    "num_classes": args.num_classes,
                },
                "image_size": args.image_size,
                "num_classes": args.num_classes,
                "batch_size": args.batch_size,
                "num_workers": 0,
                "pin_memory": False,
            },
            "distill": {
                "task_weight": 1.0 - ALPHA if kd else 1.0,
                "terms": [{"loss": "kd", "weight": ALPHA, "temperature": TEMPERATURE}] if kd else [],
            },
            "cache": {"enabled": mode == "cache", "dir": cache_dir, "logits_topk": args.topk},
            "train": {
                "epochs": blocks,  # one _train_epoch call per block: the cosine schedule spans the whole run
                "max_steps_per_epoch": args.steps,
                "amp": args.amp,
                "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": BETAS},
                "schedule": {"name": "cosine"},
            },
            "log": {"loggers": [], "progress": False, "verbose": False},
        }
    )


def build_trainer(config: RunConfig) -> Trainer:
    context = setup_process(config)  # threads + seeds, as `kdforge train` does: every student starts the same
    parts = build_run(config, context)
    return Trainer(config, parts.distiller, parts.task, parts.train_loader, parts.val_loader, context)


def amp_context(device: torch.device, amp: str) -> Callable[[], AbstractContextManager]:
    if amp == "off":
        return nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class HandLoop:
    """The minimal hand-written KD loop, with exactly kdforge's settings."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        loader: DataLoader,
        device: torch.device,
        amp: str,
        total_steps: int,
    ) -> None:
        self.teacher, self.student, self.loader, self.device = teacher, student, loader, device
        self.autocast = amp_context(device, amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        decay = [p for p in student.parameters() if p.ndim > 1]
        no_decay = [p for p in student.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
            lr=LR,
            betas=BETAS,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total_steps)))
        )
        self.steps = 0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.autocast():
            t_logits = self.teacher(x)
        with self.autocast():
            s_logits = self.student(x)
        s, t = s_logits.float(), t_logits.float()
        ce = F.cross_entropy(s, y)
        kl = F.kl_div(
            F.log_softmax(s / TEMPERATURE, dim=-1),
            F.log_softmax(t / TEMPERATURE, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1.0 - ALPHA) * ce + ALPHA * TEMPERATURE**2 * kl

    def run(self, steps: int) -> None:
        self.student.train()
        self.teacher.eval()
        for batch in itertools.islice(self.loader, steps):
            x = batch["input"].to(self.device, non_blocking=True)
            y = batch["target"].to(self.device, non_blocking=True)
            loss = self.loss(x, y)
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1


def kdforge_block(trainer: Trainer) -> None:
    """One `Trainer._train_epoch` (``max_steps_per_epoch`` steps), then what `_end_epoch` does to the
    epoch counters, minus evaluation and checkpoints (run_dir is None: nothing would be written)."""
    trainer._train_epoch()
    trainer.state.epoch += 1
    trainer.state.step_in_epoch = 0


# ---------------------------------------------------------------- measurement
def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Wall-clock seconds of `fn`, with the GPU's queued work included."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check_same_loss(trainer: Trainer, hand: HandLoop, batch: dict[str, Any], device: torch.device) -> float:
    """Both loops' loss on one batch, before any step (identical weights): proves they do the same maths."""
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    trainer.distiller.train()
    hand.student.train()
    with torch.no_grad(), trainer.autocast():
        ours = trainer.distiller(batch)["loss"].float()
    with torch.no_grad():
        theirs = hand.loss(batch["input"], batch["target"])
    return abs(float(ours) - float(theirs))


def profile_blocks(loops: dict[str, Callable[[], None]], steps: int, top: int) -> None:
    for name, fn in loops.items():
        profiler = cProfile.Profile()
        profiler.enable()
        fn()
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"\n===== cProfile, {name}, {steps} steps (sorted by tottime) =====")
        print(out.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one block of each loop each)")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed blocks of each loop first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--topk", type=int, default=32, help="cache.logits_topk")
    parser.add_argument("--teacher", default="resnet101", help="timm model name")
    parser.add_argument("--student", default="lcnet_050", help="timm model name")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="kdforge's train.amp (auto: bf16 on CUDA, off on CPU); the hand loop matches",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one block of each loop at the end")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args(argv)
    sizes = (args.threads, args.steps, args.rounds, args.batch_size, args.image_size, args.num_classes)
    if min(sizes) < 1 or args.warmup_rounds < 0:
        parser.error("sizes and counts must be >= 1 (--warmup-rounds >= 0)")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    blocks = args.warmup_rounds + args.rounds + (1 if args.profile else 0)
    with tempfile.TemporaryDirectory(prefix="kdforge-bench-cache-") as tmp:
        cache_dir = str(Path(tmp) / "cache")
        live = build_trainer(bench_config(args, blocks, "live", cache_dir))
        tic = time.perf_counter()
        cached = build_trainer(bench_config(args, blocks, "cache", cache_dir))  # builds the cache first
        build_s = time.perf_counter() - tic
        alone = build_trainer(bench_config(args, blocks, "alone", cache_dir))
        return measure(args, blocks, live, cached, alone, build_s)


def measure(
    args: argparse.Namespace, blocks: int, live: Trainer, cached: Trainer, alone: Trainer, build_s: float
) -> dict[str, float]:
    device = live.device
    context = Context(device, live.world)
    hand_loader = build_loaders(live.config, live.train_loader.dataset, live.val_loader.dataset, context)[0]
    hand_student = copy.deepcopy(live.student)  # same initial weights, own optimizer
    teacher = live.distiller.teacher.net.model
    hand = HandLoop(teacher, hand_student, hand_loader, device, live.amp, blocks * live.steps_per_epoch)
    batch = next(iter(hand_loader))
    cached_batch = next(iter(DataLoader(cached.train_loader.dataset, batch_size=args.batch_size)))
    diff = check_same_loss(live, hand, batch, device)
    cache_diff = abs(loss_of(cached, cached_batch) - loss_of(live, batch))
    report = cache_report(cached.distiller.cached.reader)

    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, amp {live.amp}")
    print(
        f"teacher {args.teacher} ({n_params(teacher):.2f}M), student {args.student} ({n_params(hand_student):.2f}M), "
        f"batch {args.batch_size}, image {args.image_size}x{args.image_size}, {args.num_classes} classes"
    )
    print(f"{args.warmup_rounds} warm-up block(s) each, then {args.rounds} rounds x {args.steps} steps per loop")
    print(
        f"loss on one batch, same weights: |kdforge live - hand-written| = {diff:.2e}, "
        f"|kdforge cache (top-{args.topk}, fp16) - live| = {cache_diff:.2e}"
    )
    mib = 2**20
    print(
        f"cache: {report['rows']} rows built in {build_s:.1f} s, {report['bytes'] / mib:.2f} MiB; fp32 full logits "
        f"{report['fp32_bytes'] / mib:.2f} MiB ({report['ratio']:.1f}x larger)"
    )

    loops = {
        "hand-written": lambda: hand.run(args.steps),
        "kdforge live": lambda: kdforge_block(live),
        "kdforge cache": lambda: kdforge_block(cached),
        "student alone": lambda: kdforge_block(alone),
    }
    for _ in range(args.warmup_rounds):
        for fn in loops.values():
            timed(fn, device)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for round_index in range(args.rounds):
        names = list(loops)
        names = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in names:
            wall = timed(loops[name], device)
            rates[name].append(args.steps / wall)
        print(f"round {round_index + 1:2d}: " + "  ".join(f"{n} {rates[n][-1]:6.2f}" for n in loops) + " steps/s")
    if args.profile:
        profile_blocks(loops, args.steps, args.profile_top)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    results = {
        "kdforge live / hand-written (samples/s)": ratio("kdforge live", "hand-written"),
        "cache step time / student-alone step time": ratio("student alone", "kdforge cache"),
        "cached epoch speed-up over live": ratio("kdforge cache", "kdforge live"),
        "teacher forward / student step (cost)": ratio("student alone", "kdforge live") - 1.0,
        "cache size: fp32 full logits / cache": report["ratio"],
    }
    print()
    for name in loops:
        print(f"{name:>14}: {statistics.median(rates[name]) * args.batch_size:8.1f} samples/s (median)")
    for name, value in results.items():
        print(f"{name}: {value:.2f}")
    return results


def loss_of(trainer: Trainer, batch: dict[str, Any]) -> float:
    trainer.distiller.train()
    batch = to_device(batch, trainer.device)
    with torch.no_grad(), trainer.autocast():
        return float(trainer.distiller(batch)["loss"])


if __name__ == "__main__":
    main()
