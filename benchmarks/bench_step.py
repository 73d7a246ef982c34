"""Per-step overhead of kdforge's Trainer against a minimal hand-written PyTorch KD loop.

Both loops run in this one process on the same teacher (shared, frozen), identical student copies,
the same optimizer/schedule settings and identical in-memory DataLoaders (``build_loaders`` over the
same synthetic tensors, ``num_workers=0``), so only the per-step loop overhead differs:

  (a) hand-written: teacher forward under ``torch.inference_mode``, student forward,
      ``(1 - alpha) * CE + alpha * T^2 * KL(batchmean)`` in float32, backward, AdamW step,
      cosine ``LambdaLR`` step, ``zero_grad(set_to_none=True)``;
  (b) kdforge: the real ``Trainer._train_epoch`` path (``train.max_steps_per_epoch = --steps``),
      built through ``kdforge.pipeline`` (build_task / build_loaders / build_distiller) with
      ``run_dir=None``, progress bar and TensorBoard off. Evaluation is never run (``_end_epoch`` is
      not called); only ``_train_epoch`` is timed.

After one warm-up block each, blocks of ``--steps`` steps alternate for ``--rounds`` rounds (the
order flips every round, AB BA AB ..., so a slow drift of the machine does not favour one side) and
the median per-round ratio kdforge/hand-written is reported.

Run:  .venv/bin/python benchmarks/bench_step.py [--threads 1] [--steps 20] [--rounds 5] [--profile]
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
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdforge.config import RunConfig, validate_config
from kdforge.engine.logger import RunLogger
from kdforge.engine.trainer import Trainer
from kdforge.pipeline import build_distiller, build_loaders, build_task, first_batch
from kdforge.runtime import setup_process

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
def bench_config(args: argparse.Namespace, blocks: int) -> RunConfig:
    return validate_config(
        {
            "seed": 0,
            "device": args.device,
            "threads": args.threads,
            "teacher": {"source": "timm", "name": args.teacher},
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
                "task_weight": 1.0 - ALPHA,
                "terms": [{"loss": "kd", "weight": ALPHA, "temperature": TEMPERATURE}],
            },
            "train": {
                "epochs": blocks,  # one _train_epoch call per block: the cosine schedule spans the whole run
                "max_steps_per_epoch": args.steps,
                "amp": args.amp,
                "optimizer": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": BETAS},
                "schedule": {"name": "cosine"},
            },
            "log": {"tensorboard": False, "progress": False},
        }
    )


def amp_context(device: torch.device, amp: str) -> Callable[[], AbstractContextManager]:
    if amp == "off":
        return nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class StepClock:
    """Per-step timestamps: a second, burst-robust estimate (median step time) next to block rates."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def step_times(self) -> list[float]:
        """Durations of steps 2.. of the last block (the first also creates the loader iterator)."""
        return [b - a for a, b in itertools.pairwise(self.stamps)]


class ClockLogger(RunLogger):
    """kdforge's silent logger (``run_dir=None``, no progress, no TensorBoard) that also stamps each step.

    `Trainer._train_epoch` calls ``logger.advance()`` once per batch, after the step's work.
    """

    def __init__(self, clock: StepClock) -> None:
        super().__init__(None, tensorboard=False, progress=False)
        self.clock = clock

    def advance(self) -> None:
        super().advance()
        self.clock.tick()


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
        self.clock = StepClock()

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
            self.clock.tick()


def kdforge_block(trainer: Trainer) -> None:
    """One `Trainer._train_epoch` (``max_steps_per_epoch`` steps), then what `_end_epoch` does to the
    epoch counters, minus evaluation and checkpoints (run_dir is None: nothing would be written)."""
    trainer._train_epoch()
    trainer.state.epoch += 1
    trainer.state.step_in_epoch = 0


# ---------------------------------------------------------------- measurement
def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of `fn`. CPU time leaves out the time this process spent
    descheduled by other load, so it is steadier on a busy machine (with --threads 1 it is the step's
    own cost; with more threads it adds every thread's time, OpenMP spinning included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


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


def profile_blocks(trainer: Trainer, hand: HandLoop, steps: int, top: int) -> None:
    for name, fn in (("hand-written", lambda: hand.run(steps)), ("kdforge", lambda: kdforge_block(trainer))):
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
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one block of each loop each)")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed blocks of each loop first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--teacher", default="resnet18", help="timm model name")
    parser.add_argument("--student", default="resnet10t", help="timm model name")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="kdforge's train.amp (auto: bf16 on CUDA, off on CPU); the hand loop matches",
    )
    parser.add_argument(
        "--order",
        default="alternate",
        choices=["alternate", "ab"],
        help="alternate: AB BA AB ...; ab: hand-written first in every round",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one block of each loop at the end")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args(argv)
    sizes = (args.threads, args.steps, args.rounds, args.batch_size, args.image_size, args.num_classes)
    if min(sizes) < 1 or args.warmup_rounds < 0:
        parser.error("sizes and counts must be >= 1 (--warmup-rounds >= 0)")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    blocks = args.warmup_rounds + args.rounds + (1 if args.profile else 0)
    config = bench_config(args, blocks)
    device = setup_process(config)  # threads + seeds, as `kdforge train` does

    task = build_task(config)
    train_set, val_set = task.datasets()
    train_loader, val_loader = build_loaders(config, train_set, val_set, device)
    distiller = build_distiller(config, task, device, first_batch(train_loader))
    kd_clock = StepClock()
    trainer = Trainer(
        config, distiller, task, train_loader, val_loader, device, run_dir=None, logger=ClockLogger(kd_clock)
    )
    assert trainer.steps_per_epoch == args.steps, (trainer.steps_per_epoch, args.steps)

    hand_loader, _ = build_loaders(config, train_set, val_set, device)  # identical loader, own iterator
    hand_student = copy.deepcopy(trainer.student_net)  # same initial weights, own optimizer
    hand = HandLoop(
        distiller.teacher.model,
        hand_student,
        hand_loader,
        device,
        trainer.amp,
        total_steps=blocks * trainer.optimizer_steps_per_epoch,
    )
    diff = check_same_loss(trainer, hand, next(iter(hand_loader)), device)

    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, amp {trainer.amp}")
    print(
        f"teacher {args.teacher} ({n_params(distiller.teacher):.2f}M), student {args.student} "
        f"({n_params(hand_student):.2f}M), batch {args.batch_size}, "
        f"image {args.image_size}x{args.image_size}, {args.num_classes} classes"
    )
    print(
        f"{args.warmup_rounds} warm-up block(s) each, then {args.rounds} rounds x {args.steps} steps "
        f"per loop; order {args.order}"
    )
    print(f"loss check on one batch (same weights): |kdforge - hand-written| = {diff:.2e}")
    if diff > 1e-3:
        print("WARNING: the two loops do not compute the same loss; the comparison is not like for like")

    loops = {
        "hand-written": (lambda: hand.run(args.steps), hand.clock),
        "kdforge": (lambda: kdforge_block(trainer), kd_clock),
    }
    for _ in range(args.warmup_rounds):
        for fn, _clock in loops.values():
            timed(fn, device)

    ratios: list[float] = []
    cpu_ratios: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, float] = {}
    step_times: dict[str, list[float]] = {name: [] for name in loops}
    for round_index in range(args.rounds):
        names = list(loops)
        if args.order == "alternate" and round_index % 2:
            names.reverse()
        for name in names:
            fn, clock = loops[name]
            clock.stamps = []
            wall, cpu[name] = timed(fn, device)
            rates[name].append(args.steps / wall)
            step_times[name] += clock.step_times()
        hand_sps, kd_sps = rates["hand-written"][-1], rates["kdforge"][-1]
        ratios.append(kd_sps / hand_sps)
        cpu_ratios.append(cpu["hand-written"] / cpu["kdforge"])
        print(
            f"round {round_index + 1:2d}: hand-written {hand_sps:7.3f} steps/s   "
            f"kdforge {kd_sps:7.3f} steps/s   ratio {ratios[-1]:.3f}   "
            f"(CPU-time ratio {cpu_ratios[-1]:.3f}; {names[0]} first)"
        )

    steps_expected = (args.warmup_rounds + args.rounds) * args.steps
    assert hand.steps == steps_expected, (hand.steps, steps_expected)
    assert trainer.state.global_step == steps_expected, (trainer.state.global_step, steps_expected)
    for name, values in rates.items():
        print(
            f"{name:>12}: median {statistics.median(values):.3f} steps/s (min {min(values):.3f}, max {max(values):.3f})"
        )
    best = max(rates["kdforge"]) / max(rates["hand-written"])
    print(f"ratio of the fastest blocks: {best:.3f}")
    print(f"CPU-time ratio (hand-written CPU s / kdforge CPU s): median {statistics.median(cpu_ratios):.3f}")
    if device.type == "cpu" and all(step_times.values()):  # on CUDA, unsynchronised stamps mean little
        medians = {name: statistics.median(times) for name, times in step_times.items()}
        print(
            f"median step time: hand-written {1e3 * medians['hand-written']:.1f} ms, "
            f"kdforge {1e3 * medians['kdforge']:.1f} ms, "
            f"ratio (as steps/s) {medians['hand-written'] / medians['kdforge']:.3f} "
            f"(over {len(step_times['kdforge'])} steps each)"
        )
    if args.profile:
        profile_blocks(trainer, hand, args.steps, args.profile_top)
    ratio = statistics.median(ratios)
    print(f"ratio kdforge/hand-written: {ratio:.2f} (median of {len(ratios)} rounds)")
    return ratio


if __name__ == "__main__":
    main()
