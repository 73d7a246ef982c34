"""The ``kdforge`` command: train, cache, eval, export, report, profile, demo, data, methods, modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdforge.core import runfiles
from kdforge.core.errors import KDForgeError


def _add_set(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _train_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("-c", "--config", action="append", default=[], help="YAML file; repeat to merge in order")
    _add_set(p, "override one value, e.g. --set train.epochs=5 (applied last)")
    p.add_argument("--teacher", help="teacher model: timm name, or pkg.mod:factory; 'none' trains without one")
    p.add_argument("--teacher-source", choices=["timm", "torchvision", "smp", "import"])
    p.add_argument("--teacher-checkpoint", help="teacher weights (.pt/.pth/.safetensors)")
    p.add_argument("--student", help="student model: timm name, or pkg.mod:factory")
    p.add_argument("--student-source", choices=["timm", "torchvision", "smp", "import"])
    p.add_argument("--alpha", type=float, help="KD weight: loss = (1-alpha)*CE + alpha*KD (default 0.7)")
    p.add_argument("--temperature", type=float, help="KD temperature (default 4)")
    p.add_argument("--data", help="dataset root with train/ and val/ class folders")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--name", help="run name under output.dir")
    p.add_argument("--resume", help="run directory or checkpoint to continue from (uses the run's config.yaml)")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also train the same student without distillation (same data, budget, seed) and compare (= compare)",
    )


def _short_flags(args: argparse.Namespace) -> dict[str, object]:
    names = (
        "teacher",
        "teacher_source",
        "teacher_checkpoint",
        "student",
        "student_source",
        "alpha",
        "temperature",
        "data",
        "epochs",
        "batch_size",
        "lr",
        "device",
        "name",
    )
    return {name: getattr(args, name) for name in names}


def cmd_train(args: argparse.Namespace) -> int:
    from kdforge.app.api import load_config
    from kdforge.app.checks import task_class
    from kdforge.app.flags import apply_short_flags
    from kdforge.app.pipeline import train
    from kdforge.app.resume import resume_target
    from kdforge.core.config import RunConfig, merge_files

    if not args.resume and not args.config and args.student is None:
        raise KDForgeError("give a config (-c FILE) or at least --student NAME and --data DIR.")
    run_dir, checkpoint = resume_target(args.resume) if args.resume else (None, None)
    raw = merge_files([run_dir / runfiles.CONFIG] if run_dir else args.config)
    task = task_class(raw.get("task", RunConfig.model_fields["task"].default))
    flags, moved = task.command_line(_short_flags(args))
    config = load_config(base=apply_short_flags(raw, flags), overrides=moved + args.overrides)
    if args.baseline:
        from kdforge.app.compare import compare

        compare(config)
        return 0
    result = train(config, resume=checkpoint, run_dir=run_dir)
    if result.run_dir is not None:  # rank 0 of a torchrun job only
        print(result.files.get("registry") or result.run_dir)  # the path a script picks up
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from kdforge.app.pipeline import build_cache
    from kdforge.core.config import load_config

    try:
        report = build_cache(load_config(args.config, args.overrides), rebuild=args.rebuild)
    except KeyboardInterrupt:
        print("kdforge: cache build interrupted; rerun the same command to continue where it stopped.", file=sys.stderr)
        return 130
    mib = 2**20
    print(
        f"{report['path']}: {report['rows']} rows, {report['bytes'] / mib:.1f} MiB on disk; the same outputs in "
        f"float32 would take {report['fp32_bytes'] / mib:.1f} MiB ({report['ratio']:.1f}x larger)"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kdforge.app.evaluation import checkpoint_path, evaluate_checkpoint, run_config
    from kdforge.core.config import load_config

    overrides = ([f"data.root={args.data}"] if args.data else []) + args.overrides
    if args.run:
        config = run_config(Path(args.run), overrides)
    elif args.config:
        config = load_config(args.config, overrides)
    else:
        raise KDForgeError("give a run directory, or -c CONFIG with --checkpoint PATH.")
    evaluate_checkpoint(config, checkpoint_path(Path(args.run) if args.run else None, args.checkpoint))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdforge.app.evaluation import export_run

    for path in export_run(Path(args.run), args.checkpoint, args.format, Path(args.out) if args.out else None):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdforge.app.demo import run_demo

    run_demo(Path(args.out), seeds=args.seeds)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdforge.app.report.html import write_report

    runs = [Path(run) for run in args.runs]
    default = runs[0] / runfiles.REPORT if len(runs) == 1 else Path(runfiles.REPORT)
    print(write_report(runs, Path(args.out) if args.out else default))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    from kdforge.app.report.compression import compression_report, print_compression
    from kdforge.core.config import load_config

    report = compression_report(load_config(args.config, args.overrides), args.input_size, args.runs)
    print_compression(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    from kdforge.core.config import ModelSpec
    from kdforge.models.build import build_model

    source = args.source or ("import" if ":" in args.model else "timm")
    net = build_model(ModelSpec(source=source, name=args.model), None)
    for name, module in net.named_modules():
        if name:
            print(f"{name}\t{type(module).__name__}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.name == "digits":
        from kdforge.data.digits import write_image_folders

        print(write_image_folders(args.out, image_size=args.image_size))
        return 0
    from kdforge.data.shapes import WRITERS

    options = dict(image_size=args.image_size, train=args.train, val=args.val, seed=args.seed)
    print(WRITERS[args.task](args.out, **options))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kdforge.distill.losses import TERMS, term_signature

    table = Table(title="distillation terms (distill.terms: [{loss: NAME, weight: W, ...parameters}])")
    for column in ("loss", "inputs", "parameters (default; * schedulable)", "reference"):
        table.add_column(column)
    for name in TERMS.names():
        params, reference = term_signature(name)  # reference: the docstring's first paragraph
        cls = TERMS.get(name)
        shown = ", ".join(
            (f"{p}={d!r}" if d is not None else f"{p} (required)") + ("*" if p in cls.schedulable else "")
            for p, d in params.items()
        )
        table.add_row(name, cls.inputs, shown, reference)
    Console(width=max(120, Console().width)).print(table)
    return 0


def _data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write a small real dataset to try a task on: digits, shapes")
    sets = p.add_subparsers(dest="name", required=True)
    p = sets.add_parser("digits", help="the bundled digits as train/ and val/ class folders (classification)")
    p.add_argument("out", help="output folder")
    p.add_argument("--image-size", type=int, default=32)
    p = sets.add_parser("shapes", help="generated circles, squares and triangles on textured backgrounds")
    p.add_argument("out", help="output folder")
    # kdforge.data.shapes.WRITERS' keys (not imported here, so the parser stays light)
    p.add_argument(
        "--task",
        required=True,
        choices=["segment", "detect"],
        help="segment: images/ + class-index masks/; detect: images/ + YOLO txt labels/",
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train", type=int, default=64, help="number of training images")
    p.add_argument("--val", type=int, default=16, help="number of validation images")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdforge", description="Knowledge distillation for PyTorch vision models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub, "train", "train or distil a student from YAML configs and/or short flags")
    _train_parser(
        sub, "compare", "train the student without distillation, then distilled, and compare (train --baseline)"
    )
    p = sub.add_parser("cache", help="run the teacher once over the training set and store its outputs")
    p.add_argument("-c", "--config", action="append", default=[], required=True, help="YAML file; repeat to merge")
    _add_set(p, "override one value, e.g. --set cache.views=8")
    p.add_argument("--rebuild", action="store_true", help="replace a cache built for other settings")
    p = sub.add_parser("eval", help="evaluate a student checkpoint on validation data")
    p.add_argument("run", nargs="?", help="run directory (its config.yaml is used)")
    p.add_argument("-c", "--config", action="append", default=[], help="config YAML, when not evaluating a run")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint / weights file")
    p.add_argument("--data", help="evaluate on this dataset root instead (its val/ split)")
    _add_set(p, "override the config, e.g. --set data.val_batch_size=256")
    p = sub.add_parser("export", help="export a run's student (safetensors, torchscript, onnx)")
    p.add_argument("run", help="run directory")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint path")
    p.add_argument(
        "--format",
        nargs="+",
        default=["safetensors", "onnx"],
        choices=["safetensors", "torchscript", "onnx"],
    )
    p.add_argument("--out", help="output folder (default: the run directory)")
    p = sub.add_parser("demo", help="teacher, student alone and student distilled on the bundled digits")
    p.add_argument("--out", default="runs/demo", help="where the three runs go")
    p.add_argument("--seeds", type=int, default=3, help="repeat the student runs over this many seeds")
    _data_parser(sub)
    p = sub.add_parser("report", help="one self-contained HTML page of a run's charts and tables, or of several")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; several are overlaid in every chart")
    p.add_argument("--out", help="HTML file (default: RUN_DIR/report.html for one run, ./report.html for several)")
    p = sub.add_parser("profile", help="compression report: teacher vs student parameters, size, MACs, CPU latency")
    p.add_argument("-c", "--config", action="append", default=[], required=True, help="YAML file; repeat to merge")
    _add_set(p, "override one value, e.g. --set student.name=resnet10t")
    p.add_argument("--input-size", type=int, help="square input side for every model (default: each model's own)")
    p.add_argument("--runs", type=int, default=20, help="timed CPU forwards per model")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    sub.add_parser("methods", help="list the distillation terms with their parameters and papers")
    p = sub.add_parser("modules", help="list a model's module names (for distill.taps)")
    p.add_argument("model", help="timm name or pkg.mod:factory")
    p.add_argument("--source", choices=["timm", "torchvision", "smp", "import"])
    return parser


COMMANDS = {
    "train": cmd_train,
    "compare": lambda args: cmd_train(argparse.Namespace(**{**vars(args), "baseline": True})),
    "cache": cmd_cache,
    "eval": cmd_eval,
    "export": cmd_export,
    "demo": cmd_demo,
    "modules": cmd_modules,
    "profile": cmd_profile,
    "data": cmd_data,
    "methods": cmd_methods,
    "report": cmd_report,
}


def _user_message(exc: KDForgeError) -> str:
    """The error's own sentence: a DataLoader worker re-raises it wrapped in its traceback, which is dropped."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KDForgeError as exc:
        print(f"kdforge: error: {_user_message(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # a preempted run ends with 128 + the signal's number
    except KeyboardInterrupt:
        print(
            "kdforge: interrupted. Checkpoints and finished cache rows are kept: run the same command again to "
            "continue (a run directory also resumes with --resume RUN_DIR).",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
