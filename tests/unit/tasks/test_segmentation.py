"""Segmentation task: pixel loss, hand-computed mIoU / pixel accuracy, output checks, datasets, summed metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdforge.core.config import ModelSpec
from kdforge.core.distributed import World
from kdforge.core.errors import ClassCountMismatchError, DataError
from kdforge.models.build import build_model
from kdforge.tasks.base import TASKS
from kdforge.tasks.segmentation import SegmentationMetrics, SegmentationTask

IGNORE = 255
FACTORY = "tests.unit.tasks.test_segmentation:tiny_segmentation"

# One image, 3 classes, 2x3 pixels. The predicted class gets logit ln 2, the others 0, so a pixel's
# cross-entropy is ln 2 when it is predicted right (p = 2/4) and ln 4 when wrong (p = 1/4).
PRED = torch.tensor([[[0, 1, 2], [0, 0, 1]]])  # (1, 2, 3)
MASK = torch.tensor([[[0, 1, 1], [IGNORE, 2, IGNORE]]])  # (1, 2, 3); right, right, wrong / -, wrong, -
LOGITS = F.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * math.log(2)  # (1, 3, 2, 3)
# Confusion over the 4 labelled pixels (row: label, column: prediction): [[1, 0, 0], [0, 1, 1], [1, 0, 0]].
# IoU = hits / (label + predicted - hits): class 0: 1 / (1 + 2 - 1), class 1: 1 / (2 + 1 - 1), class 2: 0 / 2.
IOU = {"bg": 50.0, "cat": 50.0, "dog": 0.0}


class _TinySegmentation(Dataset):
    """(image (3, 8, 8), mask (8, 8)) pairs whose masks use every class, with a ``classes`` attribute."""

    def __init__(self, classes: list[str], size: int) -> None:
        self.classes = classes
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(64).reshape(8, 8) % len(self.classes)
        mask[0, 0] = IGNORE
        return torch.full((3, 8, 8), float(index)), mask


def tiny_segmentation(
    split: str, classes: tuple[str, ...] = ("bg", "cat", "dog"), val_classes=None, named: bool = True
) -> Dataset:
    """Dataset factory for data.factory; `val_classes` gives the val split other classes, `named` False none."""
    dataset = _TinySegmentation(list(val_classes if split == "val" and val_classes else classes), size=4)
    if not named:
        dataset.classes = None
    return dataset


@pytest.fixture
def task(make_config) -> SegmentationTask:
    task = TASKS.get("segmentation")(make_config(task="segmentation"))
    task.num_classes, task.class_names = 3, list(IOU)
    return task


def test_metrics_match_hand_computed_values_without_ignored_pixels(task):
    metrics = task.metrics()
    metrics.update({"logits": LOGITS}, {"target": MASK})
    values = metrics.compute()
    assert values["val/miou"] == pytest.approx(100 / 3)
    assert values["fitness"] == values["val/miou"]
    assert values["val/pixel_acc"] == pytest.approx(50.0)
    assert {k: v for k, v in values.items() if k.startswith("val/iou/")} == pytest.approx(
        {f"val/iou/{name}": iou for name, iou in IOU.items()}
    )
    assert values["val/loss"] == pytest.approx(1.5 * math.log(2))  # (ln 2 + ln 2 + ln 4 + ln 4) / 4


def test_a_class_neither_labelled_nor_predicted_gets_no_iou_and_leaves_miou_alone():
    absent = torch.full((1, 1, 2, 3), -100.0)  # class 3: never predicted, never in the mask
    metrics = SegmentationMetrics(4, IGNORE, [*IOU, "bird"])
    metrics.update({"logits": torch.cat([LOGITS, absent], dim=1)}, {"target": MASK})
    values = metrics.compute()
    assert "val/iou/bird" not in values
    assert values["val/miou"] == pytest.approx(100 / 3)
    per_class = [v for k, v in values.items() if k.startswith("val/iou/")]
    assert values["val/miou"] == pytest.approx(sum(per_class) / len(per_class))


def test_perfect_predictions_score_100(task):
    mask = torch.randint(0, 3, (2, 5, 7))
    metrics = task.metrics()
    metrics.update({"logits": F.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 10}, {"target": mask})
    values = metrics.compute()
    assert values["val/miou"] == values["val/pixel_acc"] == values["fitness"] == pytest.approx(100.0)


def test_an_empty_accumulator_reports_every_key_as_zero(task):
    values = task.metrics().compute()
    expected = {"fitness", "val/miou", "val/pixel_acc", "val/loss", *(f"val/iou/{name}" for name in IOU)}
    assert set(values) == expected
    assert all(v == 0.0 for v in values.values())


def test_mask_values_outside_the_classes_are_named(task):
    mask = MASK.clone()
    mask[0, 0, 0] = 7
    with pytest.raises(DataError, match="mask value 7"):
        task.metrics().update({"logits": LOGITS}, {"target": mask})


def test_loss_ignores_unlabelled_pixels(task):
    logits = LOGITS.clone().requires_grad_()
    loss = task.loss({"logits": logits}, {"target": MASK})
    assert loss.item() == pytest.approx(1.5 * math.log(2))
    loss.backward()
    ignored = (MASK == IGNORE)[:, None].expand_as(logits)  # (1, 3, 2, 3)
    assert torch.all(logits.grad[ignored] == 0) and torch.all(logits.grad[~ignored] != 0)


def test_loss_is_zero_in_the_graph_when_no_pixel_is_labelled(task):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = task.loss({"logits": logits}, {"target": torch.full((2, 4, 4), IGNORE)})
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_low_resolution_logits_are_upsampled_to_the_mask(task):
    logits = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)  # a model predicting at half resolution, under autocast
    mask = torch.randint(0, 3, (2, 8, 8))
    mask[:, 0] = IGNORE
    upsampled = F.interpolate(logits.float(), size=(8, 8), mode="bilinear", align_corners=False)
    loss = task.loss({"logits": logits}, {"target": mask})
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(F.cross_entropy(upsampled, mask, ignore_index=IGNORE).item(), rel=1e-6)

    metrics = task.metrics()
    metrics.update({"logits": logits}, {"target": mask})
    assert int(metrics.confusion.sum()) == int((mask != IGNORE).sum())
    assert metrics.compute()["val/pixel_acc"] == pytest.approx(
        100.0 * (upsampled.argmax(1) == mask)[mask != IGNORE].float().mean().item()
    )


def test_to_outputs_takes_tensors_dicts_and_the_first_of_several_heads(task):
    logits = torch.zeros(1, 3, 2, 2)
    assert task.to_outputs(logits)["logits"] is logits
    assert task.to_outputs({"logits": logits, "aux": logits})["aux"] is logits
    assert task.to_outputs((logits, torch.zeros(1, 3)))["logits"] is logits


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ({"logits": torch.zeros(1, 4, 2, 3)}, "predicts 4 classes but the dataset has 3"),
        ({"logits": torch.zeros(1, 3)}, r"shape \(batch, classes, height, width\); got \(1, 3\)"),
        ({"features": torch.zeros(1, 3, 2, 3)}, "got None"),
    ],
)
def test_check_outputs_names_what_does_not_fit(task, outputs, match):
    with pytest.raises(ClassCountMismatchError, match=match):
        task.check_outputs(outputs, "student")


def test_sum_attributes_leaves_tensors_alone_in_one_process(task):
    metrics = task.metrics()
    metrics.update({"logits": LOGITS}, {"target": MASK})
    confusion, loss_sum = metrics.confusion, metrics.loss_sum
    before = confusion.clone()
    World().sum_attributes(metrics, metrics.sums)
    assert metrics.confusion is confusion and confusion.dtype == torch.int64 and torch.equal(confusion, before)
    assert metrics.loss_sum == loss_sum


def _evaluate_share(rank: int, store: str, out: str, device: str) -> None:
    """One of two gloo processes: the metrics of its half of the batch (on `device`), summed with the other's."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metrics = SegmentationMetrics(3, IGNORE, list(IOU))
        outputs, batch = _share(rank)
        metrics.update({"logits": outputs["logits"].to(device)}, {"target": batch["target"].to(device)})
        World.joined().sum_attributes(
            metrics, metrics.sums
        )  # gloo reduces on the CPU: a CUDA matrix goes there and back
        assert metrics.confusion.dtype == torch.int64 and metrics.confusion.device.type == device
        if rank == 0:
            Path(out).write_text(json.dumps(metrics.compute()))
    finally:
        dist.destroy_process_group()


def _share(rank: int | None) -> tuple[dict, dict]:
    """Rank `rank`'s half of a fixed batch of 4, or all of it for None."""
    generator = torch.Generator().manual_seed(0)
    logits, mask = torch.randn(4, 3, 4, 4, generator=generator), torch.randint(0, 3, (4, 8, 8), generator=generator)
    rows = slice(None) if rank is None else slice(2 * rank, 2 * rank + 2)
    return {"logits": logits[rows]}, {"target": mask[rows]}


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_two_processes_sum_to_the_metrics_of_one(tmp_path, device):
    out = tmp_path / "metrics.json"
    mp.spawn(_evaluate_share, args=(str(tmp_path / "store"), str(out), device), nprocs=2)
    single = SegmentationMetrics(3, IGNORE, list(IOU))
    single.update(*_share(None))
    assert json.loads(out.read_text()) == pytest.approx(single.compute())


def _config_with(make_config, **data):
    return make_config(task="segmentation", data={"dataset": "import", "factory": FACTORY, **data})


def test_datasets_set_the_class_count_and_names(make_config):
    task = TASKS.get("segmentation")(_config_with(make_config))
    train, val = task.datasets()
    assert (task.num_classes, task.class_names) == (3, ["bg", "cat", "dog"])
    assert train[1]["target"].shape == (8, 8) and val[0]["input"].shape == (3, 8, 8)


def test_class_names_come_from_the_config_when_the_dataset_has_none(make_config):
    task = TASKS.get("segmentation")(_config_with(make_config, kwargs={"named": False}, class_names=["a", "b", "c"]))
    task.datasets()
    assert (task.num_classes, task.class_names) == (3, ["a", "b", "c"])
    with pytest.raises(DataError, match="set data.class_names or data.num_classes"):
        TASKS.get("segmentation")(_config_with(make_config, kwargs={"named": False})).datasets()


def test_datasets_refuse_splits_with_different_classes(make_config):
    task = TASKS.get("segmentation")(_config_with(make_config, kwargs={"val_classes": ["bg", "cat", "bird"]}))
    with pytest.raises(DataError, match=r"only in train: \['dog'\], only in val: \['bird'\]"):
        task.datasets()


def test_datasets_refuse_hiding_labels_by_class(make_config):
    with pytest.raises(DataError, match="data.ignore_index"):
        TASKS.get("segmentation")(_config_with(make_config, labelled_fraction=0.5)).datasets()


def test_smp_model_outputs_fit_the_task(task):
    task.num_classes, task.class_names = 4, ["a", "b", "c", "d"]
    model = build_model(ModelSpec(source="smp", name="Segformer", kwargs={"encoder_name": "mit_b0"}), 4)
    outputs = task.to_outputs(model(torch.randn(2, 3, 64, 64)))
    task.check_outputs(outputs, "student")
    assert torch.isfinite(task.loss(outputs, {"target": torch.randint(0, 4, (2, 64, 64))}))
