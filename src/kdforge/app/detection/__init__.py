"""YOLO detection distillation on Ultralytics (``task: detection``; the optional extra ``kdforge[yolo]``).

The seam: detection is the one task whose loop is not kdforge's ``Trainer``. Ultralytics' tuned recipe (mosaic
and its close-out, bias warm-up, EMA, its validator) runs unchanged in `trainer.KDDetectionTrainer`, a small
``DetectionTrainer`` subclass. The student stays a plain Ultralytics ``DetectionModel`` (so its checkpoints are
ones ``ultralytics.YOLO()`` loads); only its loss criterion is swapped for `criterion.DistillationCriterion`,
which adds kdforge's distillation terms (`losses`) to Ultralytics' own detection loss. Callbacks feed
kdforge's ``metrics.jsonl``, TensorBoard and report (`logging`); `run.train_detection` ties it together and
`export` writes the model registry.

Importing this package points Ultralytics at a kdforge-owned settings folder and switches it offline
(`offline.configure_ultralytics`), before any submodule imports ultralytics.
"""

from kdforge.app.detection.offline import configure_ultralytics

configure_ultralytics()


def train_detection(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy entry point
    """See `kdforge.app.detection.run.train_detection` (imported lazily: ultralytics is optional)."""
    from kdforge.app.detection.run import train_detection as _train

    return _train(*args, **kwargs)
