"""YOLO distillation on the generated shapes: teacher, student alone, student distilled with kdforge, and student
distilled with Ultralytics' own ``distill_model=`` option, all students with equal epochs, over several seeds.

Reports each arm's final mAP50-95 (best.pt, validated after training) and the median training-step time, and the
step-time ratios distilled / student alone for kdforge and for Ultralytics, measured in this one process run.
A step is timed from Ultralytics' ``on_train_batch_start`` to ``on_train_batch_end`` callbacks (forward, loss,
backward and, every ``accumulate`` batches, the optimizer step; data loading and validation excluded).

    .venv/bin/python benchmarks/bench_yolo.py --out runs/bench_yolo --epochs 30 --seeds 0 1 2

Run by hand, never timed in tests. CPU by default, one thread (``--threads``), no downloads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import kdforge.app.detection  # noqa: F401  (offline settings before ultralytics is imported)
from kdforge.app.detection.args import ultralytics_args
from kdforge.app.detection.run import train_detection
from kdforge.core.config import load_config
from kdforge.data.shapes import write_detection_shapes

STUDENT, TEACHER = "yolov8n.yaml", "yolov8s.yaml"


class StepTimer:
    """Times each training batch through the trainer's own callbacks."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def attach(self, trainer: Any) -> None:
        trainer.add_callback("on_train_batch_start", self._begin)
        trainer.add_callback("on_train_batch_end", self._end)

    def _begin(self, trainer: Any) -> None:
        self._start = time.perf_counter()

    def _end(self, trainer: Any) -> None:
        self.times.append(time.perf_counter() - self._start)

    def median_ms(self) -> float:
        return 1000 * statistics.median(self.times[len(self.times) // 10 :])  # the first 10% warm up


def interleaved_steps(teacher: Path, args: argparse.Namespace, reps: int = 15) -> dict[str, float]:
    """Median training-step ms of the three arms on one fixed batch, taken in turn (alone, kdforge, Ultralytics,
    alone, ...), so load from other processes on a shared machine falls on every arm alike."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    from kdforge.app.detection.criterion import DistillationCriterion
    from kdforge.app.detection.teacher import load_teacher
    from kdforge.core.config import ModelSpec
    from kdforge.core.config.detection import DetectDistillConfig

    def student() -> DetectionModel:
        model = DetectionModel(STUDENT, nc=3, verbose=False)
        model.args = get_cfg(overrides={"imgsz": args.imgsz, "dis": 6.0})
        return model.train()

    spec = ModelSpec(source="ultralytics", name=str(teacher), trust_checkpoint=True)
    kd = student()
    kd.criterion = DistillationCriterion(kd, load_teacher(spec, 3, torch.device("cpu")), DetectDistillConfig(), None)
    ultra = DistillationModel(load_checkpoint(str(teacher))[0], student()).train()
    arms = {"alone": student(), "kdforge": kd, "ultralytics": ultra}
    gen = torch.Generator().manual_seed(0)
    n = args.batch
    batch = {
        "img": torch.rand(n, 3, args.imgsz, args.imgsz, generator=gen),
        "batch_idx": torch.arange(n).repeat_interleave(2).float(),
        "cls": torch.randint(0, 3, (2 * n, 1), generator=gen).float(),
        "bboxes": torch.rand(2 * n, 4, generator=gen) * 0.4 + 0.2,
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(reps):
        for name, model in arms.items():
            start = time.perf_counter()
            loss, _ = model(batch) if name == "ultralytics" else model.loss(batch)
            loss.sum().backward()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values[2:]) for name, values in times.items()}


def base_config(args: argparse.Namespace, data: Path, name: str, seed: int, **detect: Any) -> dict[str, Any]:
    return {
        "task": "detection",
        "device": args.device,
        "threads": args.threads,
        "seed": seed,
        "student": {"source": "ultralytics", "name": STUDENT},
        "output": {"dir": str(args.out / "runs"), "name": name, "exist_ok": True},
        "log": {"verbose": False, "loggers": [], "report": False},
        "detect": {
            "data": {"root": str(data)},
            "epochs": args.epochs,
            "batch": args.batch,
            "imgsz": args.imgsz,
            "workers": 0,
            "patience": 10_000,  # equal epochs for every arm: no early stop
            "val_teacher": False,
            "registry": {"enabled": False},
            "extra": {"nbs": args.nbs or args.batch},  # nominal batch: one optimizer step per `nbs` images
            **detect,
        },
    }


def run_kdforge(config: dict[str, Any]) -> tuple[dict[str, float], float]:
    """A kdforge run (distilled, or the student alone when the config has no teacher) with its step time."""
    timer = StepTimer()
    original = kdforge.app.detection.run.LogBridge.attach

    def attach(bridge: Any, trainer: Any) -> None:  # time the very trainer kdforge builds
        original(bridge, trainer)
        timer.attach(trainer)

    kdforge.app.detection.run.LogBridge.attach = attach
    try:
        result = train_detection(load_config(base=config))
    finally:
        kdforge.app.detection.run.LogBridge.attach = original
    return result.metrics, timer.median_ms()


def run_ultralytics_distill(config: dict[str, Any], teacher: Path) -> tuple[dict[str, float], float]:
    """Ultralytics' built-in distillation (``distill_model=``, its default ``dis`` weight), same arguments."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    cfg = load_config(base=config)
    run_dir = Path(cfg.output.dir) / cfg.output.name
    run_dir.mkdir(parents=True, exist_ok=True)
    data = kdforge.app.detection.data.prepare_data(cfg.detect.data, run_dir)
    overrides = {**ultralytics_args(cfg, data.yaml_path, run_dir), "distill_model": str(teacher)}
    torch.set_num_threads(cfg.threads)
    trainer = DetectionTrainer(overrides=overrides)
    timer = StepTimer()
    timer.attach(trainer)
    trainer.train()
    metrics = {k.split("/")[1].removesuffix("(B)"): float(v) for k, v in trainer.metrics.items() if "metrics/" in k}
    return metrics, timer.median_ms()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_yolo"))
    parser.add_argument("--epochs", type=int, default=30, help="every student arm")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--nbs", type=int, default=0, help="Ultralytics' nominal batch (0: --batch, a step a batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arms", nargs="*", default=["alone", "kdforge", "ultralytics"])
    parser.add_argument("--step-reps", type=int, default=15, help="interleaved step timing repeats (0: skip)")
    parser.add_argument("--set", dest="kd", action="append", default=[], help="detect.distill KEY=VALUE for kdforge")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = write_detection_shapes(args.out / "shapes", image_size=args.imgsz, train=args.train, val=args.val)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    teacher = train_teacher(args, data, results)
    distill = {k: _number(v) for k, v in (item.split("=", 1) for item in args.kd)}
    for seed in args.seeds:
        for arm in args.arms:
            metrics, step_ms = run_arm(arm, args, data, seed, teacher, distill)
            results["runs"].append({"arm": arm, "seed": seed, "metrics": metrics, "step_ms": step_ms})
            print(json.dumps(results["runs"][-1]), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.step_reps:
        results["interleaved_step_ms"] = interleaved_steps(teacher, args, args.step_reps)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def train_teacher(args: argparse.Namespace, data: Path, results: dict[str, Any]) -> Path:
    """The teacher, trained from scratch on the same shapes (reused when its best.pt exists)."""
    best = args.out / "runs" / "teacher" / "yolo" / "weights" / "best.pt"
    if not best.is_file():
        config = base_config(args, data, "teacher", 0, epochs=args.teacher_epochs)
        config["student"]["name"] = TEACHER
        metrics, step_ms = run_kdforge(config)
        results["teacher"] = {"metrics": metrics, "step_ms": step_ms}
    else:
        results["teacher"] = json.loads((best.parents[2] / "summary.json").read_text())["student"]
    print(json.dumps({"teacher": results["teacher"]}), flush=True)
    return best


def run_arm(
    arm: str, args: argparse.Namespace, data: Path, seed: int, teacher: Path, distill: dict[str, Any]
) -> tuple[dict[str, float], float]:
    config = base_config(args, data, f"{arm}-s{seed}", seed)
    if arm == "alone":
        return run_kdforge(config)
    if arm == "kdforge":
        config["teacher"] = {"source": "ultralytics", "name": str(teacher), "trust_checkpoint": True}
        config["detect"]["distill"] = distill
        return run_kdforge(config)
    if arm == "ultralytics":
        return run_ultralytics_distill(config, teacher)
    raise SystemExit(f"unknown arm {arm!r}; choose from alone, kdforge, ultralytics")


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def table(results: dict[str, Any]) -> str:
    """Mean (and per-seed) mAP50-95 and median step time per arm, and the step-time ratios to the student alone."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)
    alone_ms = statistics.mean(r["step_ms"] for r in by_arm.get("alone", [{"step_ms": float("nan")}]))
    lines = ["| arm | mAP50-95 mean | per seed | step ms | step ratio vs alone |", "|---|---|---|---|---|"]
    teacher = results.get("teacher", {})
    lines.append(f"| teacher ({TEACHER}) | {teacher.get('metrics', {}).get('mAP50-95', float('nan')):.3f} | | | |")
    for arm, runs in by_arm.items():
        maps = [r["metrics"].get("mAP50-95", float("nan")) for r in runs]
        ms = statistics.mean(r["step_ms"] for r in runs)
        per_seed = ", ".join(f"{m:.3f}" for m in maps)
        lines.append(f"| {arm} | {statistics.mean(maps):.3f} | {per_seed} | {ms:.1f} | {ms / alone_ms:.2f} |")
    steps = results.get("interleaved_step_ms")
    if steps:
        ratios = ", ".join(f"{arm} {ms:.0f} ms ({ms / steps['alone']:.2f}x)" for arm, ms in steps.items())
        lines.append(f"\nInterleaved step time on one batch: {ratios}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
