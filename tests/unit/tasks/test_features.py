"""Features task: hand-computed weighted k-NN votes, KNNMetrics end to end, linear probe, outputs, config rules."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, Subset

import kdforge.tasks.features as features
from kdforge.app.checks import check_config
from kdforge.core.config import FeaturesConfig, RunConfig, validate_config
from kdforge.core.errors import ClassCountMismatchError, ConfigError, DataError
from kdforge.tasks.features import FeaturesTask, KNNEvalSet, KNNMetrics, knn_hits, linear_probe_accuracy

TEACHER = {"source": "import", "name": "kdforge.models.zoo:cnn", "kwargs": {"in_chans": 1, "widths": [8]}}
TERMS = [{"loss": "kd", "weight": 1.0}]


def _checked(raw: dict) -> RunConfig:
    """The config as a run resolves it: the schema, then the task's own rules."""
    return check_config(validate_config(raw))


def unit(degrees: float) -> list[float]:
    """The 2-D unit vector at `degrees`."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def vectors(*degrees: float) -> torch.Tensor:
    return torch.tensor([unit(d) for d in degrees])  # (N, 2)


def features_config(**distill: Any) -> Any:
    """A `task: features` run config; `distill` replaces the distill section."""
    raw = {"task": "features", "teacher": TEACHER, "student": TEACHER, "distill": distill or {"terms": TERMS}}
    return _checked(raw)


# --- knn_hits ---------------------------------------------------------------------------------------------------

# Memory: class 0 at 0 degrees, class 1 at 10 and 20 degrees; the query sits at 0 degrees. k = 3 takes all three.
# Votes are exp(cos(angle) / T):
#   T = 0.02: class 0 gets e^50, class 1 gets e^49.24 + e^46.98 = e^50 * (e^-0.76 + e^-3.02) = 0.52 e^50 -> 0 wins;
#   T = 1:    class 0 gets e^1 = 2.72, class 1 gets e^0.985 + e^0.940 = 2.68 + 2.56 = 5.24 -> 1 wins (the majority).
THREE_MEMORY = vectors(0, 10, 20)
THREE_TARGETS = torch.tensor([0, 1, 1])


@pytest.mark.parametrize(("temperature", "winner"), [(0.02, 0), (1.0, 1)])
def test_knn_temperature_decides_between_nearest_and_majority(temperature: float, winner: int) -> None:
    cfg = FeaturesConfig(knn_k=3, knn_temperature=temperature)
    queries, targets = vectors(0, 0, 0), torch.tensor([0, 1, 2])
    hits = knn_hits(queries, targets, THREE_MEMORY, THREE_TARGETS, cfg, num_classes=3)
    loser = 1 - winner
    # Ranked classes: winner, loser, then class 2 (no votes): column j says whether the rank-j class is the target.
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[winner, 0] = expected[loser, 1] = expected[2, 2] = True
    assert hits.dtype == torch.bool and torch.equal(hits, expected)


@pytest.mark.parametrize("temperature", [0.01, 0.005])
def test_knn_low_temperature_still_lets_the_nearest_win(temperature: float) -> None:
    # As T -> 0 the nearest neighbour dominates more and more: at T = 0.02 class 0 wins above; so must it at T < 0.02.
    # The nearest is class 1 here (0 degrees) against class 0 at 10 and 20 degrees, so a tie broken by index loses.
    cfg = FeaturesConfig(knn_k=3, knn_temperature=temperature)
    hits = knn_hits(vectors(0), torch.tensor([1]), THREE_MEMORY, torch.tensor([1, 0, 0]), cfg, num_classes=3)
    assert hits[0, 0]


def test_knn_k_limits_the_voters() -> None:
    # k = 1: only the nearest (class 0 at 0 degrees) votes, whatever the temperature.
    cfg = FeaturesConfig(knn_k=1, knn_temperature=1.0)
    hits = knn_hits(vectors(0), torch.tensor([0]), THREE_MEMORY, THREE_TARGETS, cfg, num_classes=3)
    assert hits[0, 0]


# Six classes, class c at 30c degrees; with k = 6 every class votes, the nearer the more. A query at 2 degrees ranks
# the classes 0, 1, 2, 3, 4, 5, so class 5 is outside its top 5; a query at 148 degrees ranks 5, 4, 3, 2, 1, 0.
SIX_MEMORY = vectors(0, 30, 60, 90, 120, 150)
SIX_TARGETS = torch.arange(6)


def test_knn_top5_hits_follow_the_weighted_ranking() -> None:
    cfg = FeaturesConfig(knn_k=6, knn_temperature=0.1)
    queries, targets = vectors(2, 2, 2, 148), torch.tensor([0, 4, 5, 5])
    hits = knn_hits(queries, targets, SIX_MEMORY, SIX_TARGETS, cfg, num_classes=6)
    assert hits.shape == (4, 5)
    assert hits[:, 0].tolist() == [True, False, False, True]  # top-1
    assert hits.any(dim=1).tolist() == [True, True, False, True]  # top-5
    assert hits[1].tolist() == [False, False, False, False, True]  # class 4 is fifth at 2 degrees


# Leave-one-out: x0 at 0 degrees (class 0), x1 at 5 (class 1), x2 at 12 (class 1), k = 1. Voting for itself every
# sample would be right; leaving itself out, x0's nearest other is x1 (class 1: wrong), x1's is x0 (5 degrees away,
# x2 is 7: class 0, wrong), x2's is x1 (class 1: right).
LOO_SET = vectors(0, 5, 12)
LOO_TARGETS = torch.tensor([0, 1, 1])


def test_knn_leave_one_out_never_votes_for_itself() -> None:
    cfg = FeaturesConfig(knn_k=1, knn_temperature=0.07)
    with_self = knn_hits(LOO_SET, LOO_TARGETS, LOO_SET, LOO_TARGETS, cfg, num_classes=2)
    left_out = knn_hits(LOO_SET, LOO_TARGETS, LOO_SET, LOO_TARGETS, cfg, num_classes=2, leave_one_out=True)
    assert with_self[:, 0].tolist() == [True, True, True]
    assert left_out[:, 0].tolist() == [False, False, True]


def test_knn_leave_one_out_caps_k_at_the_others() -> None:
    # k = 20 > 2 others: every other sample votes. x0: x1 and x2 both class 1 -> wrong; x1: x0 (0) at cos 5 vs x2 (1)
    # at cos 7, T = 1 -> nearly equal weights, x0 slightly more -> wrong; x2: x1 (1) at cos 7 beats x0 (0) at cos 12.
    cfg = FeaturesConfig(knn_k=20, knn_temperature=1.0)
    hits = knn_hits(LOO_SET, LOO_TARGETS, LOO_SET, LOO_TARGETS, cfg, num_classes=2, leave_one_out=True)
    assert hits[:, 0].tolist() == [False, False, True]


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_knn_chunking_gives_the_same_hits(monkeypatch: pytest.MonkeyPatch, leave_one_out: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(9, 4, generator=generator), dim=1)
    targets = torch.randint(0, 3, (9,), generator=generator)
    cfg = FeaturesConfig(knn_k=3, knn_temperature=0.1)
    whole = knn_hits(points, targets, points, targets, cfg, 3, leave_one_out)
    monkeypatch.setattr(features, "KNN_QUERY_CHUNK", 1)
    chunked = knn_hits(points, targets, points, targets, cfg, 3, leave_one_out)
    monkeypatch.setattr(features, "KNN_QUERY_CHUNK", 4)  # a last chunk shorter than the others
    uneven = knn_hits(points, targets, points, targets, cfg, 3, leave_one_out)
    assert torch.equal(whole, chunked) and torch.equal(whole, uneven)


def test_knn_leaves_its_inputs_untouched() -> None:
    before = LOO_SET.clone()
    knn_hits(LOO_SET, LOO_TARGETS, LOO_SET, LOO_TARGETS, FeaturesConfig(knn_k=1), 2, leave_one_out=True)
    assert torch.equal(LOO_SET, before)


# --- KNNMetrics -------------------------------------------------------------------------------------------------

QUERY_DEGREES = [2, 2, 2, 148]
QUERY_TARGETS = [0, 4, 5, 5]  # top-1: hit, miss, miss, hit; top-5: hit, hit, miss, hit (see SIX_MEMORY)


def _fill(metrics: KNNMetrics) -> None:
    """Two batches mixing the six labelled memory rows, an unlabelled memory row near the queries, the four
    labelled queries and an unlabelled query; embeddings are scaled (update normalises them)."""
    first = torch.cat([SIX_MEMORY[:3] * 3.0, vectors(2) * 0.5, vectors(1), vectors(90)])
    metrics.update(
        {"embedding": first},
        {"target": torch.tensor([0, 1, 2, 0, -1, -1]), "memory": torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool)},
    )
    second = torch.cat([vectors(2, 2, 148) * 7.0, SIX_MEMORY[3:]])
    metrics.update(
        {"embedding": second},
        {"target": torch.tensor([4, 5, 5, 3, 4, 5]), "memory": torch.tensor([False, False, False, True, True, True])},
    )


def _query_std() -> float:
    """Mean over the two dimensions of the std of the labelled queries' unit vectors."""
    columns = zip(*(unit(d) for d in QUERY_DEGREES), strict=True)
    return statistics.mean(statistics.stdev(column) for column in columns)


def test_knn_metrics_end_to_end() -> None:
    metrics = KNNMetrics(FeaturesConfig(knn_k=6, knn_temperature=0.1), num_classes=6, leave_one_out=False)
    _fill(metrics)
    result = metrics.compute()
    assert set(result) == set(metrics.names()) == {"val/knn_acc1", "val/knn_acc5", "val/embedding_std", "fitness"}
    assert result["val/knn_acc1"] == pytest.approx(50.0)
    assert result["val/knn_acc5"] == pytest.approx(75.0)
    assert result["val/embedding_std"] == pytest.approx(_query_std(), rel=1e-5)
    assert result["fitness"] == result["val/knn_acc1"]


def test_knn_metrics_linear_probe_and_linear_fitness() -> None:
    cfg = FeaturesConfig(knn_k=6, knn_temperature=0.1, linear_probe=True, fitness="linear")
    metrics = KNNMetrics(cfg, num_classes=6, leave_one_out=False)
    _fill(metrics)
    result = metrics.compute()
    assert (
        set(result)
        == set(metrics.names())
        == {"val/knn_acc1", "val/knn_acc5", "val/embedding_std", "val/linear_acc1", "fitness"}
    )
    assert 0.0 <= result["val/linear_acc1"] <= 100.0
    assert result["fitness"] == result["val/linear_acc1"]


def test_knn_metrics_leave_one_out_on_val() -> None:
    metrics = KNNMetrics(FeaturesConfig(knn_k=1), num_classes=2, leave_one_out=True)
    memory = torch.ones(3, dtype=torch.bool)  # knn_memory: val marks every val sample as memory
    metrics.update({"embedding": LOO_SET}, {"target": LOO_TARGETS, "memory": memory})
    result = metrics.compute()
    assert set(result) == set(metrics.names()) == {"val/knn_acc1", "val/knn_acc2", "val/embedding_std", "fitness"}
    assert result["val/knn_acc1"] == pytest.approx(100.0 / 3)  # x2 only, as in the knn_hits example
    assert result["val/knn_acc2"] == pytest.approx(100.0)  # two classes: both are in the top 2


def test_knn_metrics_with_one_class_reports_no_topk() -> None:
    metrics = KNNMetrics(FeaturesConfig(knn_k=1), num_classes=1, leave_one_out=False)
    assert metrics.names() == ["val/knn_acc1", "val/embedding_std", "fitness"]


def test_knn_metrics_without_labelled_memory_names_knn_memory() -> None:
    metrics = KNNMetrics(FeaturesConfig(knn_k=1), num_classes=2, leave_one_out=False)
    metrics.update(
        {"embedding": LOO_SET},
        {"target": torch.tensor([-1, -1, 1]), "memory": torch.tensor([True, True, False])},
    )
    with pytest.raises(DataError, match="knn_memory"):
        metrics.compute()


def test_knn_metrics_before_any_update_reports_zeros_under_the_same_names() -> None:
    cfg = FeaturesConfig(linear_probe=True)
    metrics = KNNMetrics(cfg, num_classes=10, leave_one_out=False)
    assert metrics.compute() == dict.fromkeys(metrics.names(), 0.0)
    assert metrics.names() == ["val/knn_acc1", "val/knn_acc5", "val/embedding_std", "val/linear_acc1", "fitness"]


# --- linear probe -----------------------------------------------------------------------------------------------


def _clusters(seed: int, per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Three tight clusters around far-apart centres: linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    targets = torch.arange(3).repeat_interleave(per_class)
    points = centres[targets] + 0.1 * torch.randn(len(targets), 3, generator=generator)
    return points, targets


def test_linear_probe_separates_clusters() -> None:
    memory, memory_targets = _clusters(0)
    queries, query_targets = _clusters(1)
    assert linear_probe_accuracy(queries, query_targets, memory, memory_targets) == 100.0


def test_linear_probe_cross_validates_when_leaving_one_out() -> None:
    points, targets = _clusters(0, per_class=4)  # 4 per class: 4-fold cross-validated predictions
    assert linear_probe_accuracy(points, targets, points, targets, leave_one_out=True) == 100.0


# --- FeaturesTask and KNNEvalSet --------------------------------------------------------------------------------


def test_task_outputs_and_model_classes() -> None:
    task = FeaturesTask(features_config())
    embedding = torch.randn(2, 4)
    assert task.to_outputs(embedding)["embedding"] is embedding
    assert task.to_outputs((embedding, torch.zeros(2)))["embedding"] is embedding
    own = {"embedding": embedding, "tokens": torch.zeros(2, 3, 4)}
    assert task.to_outputs(own) is own
    assert task.model_classes == 0 and task.embeds_only


@pytest.mark.parametrize("outputs", [{}, {"embedding": torch.zeros(2, 0)}, {"embedding": torch.zeros(2)}])
def test_task_refuses_outputs_without_an_embedding(outputs: dict) -> None:
    with pytest.raises(ClassCountMismatchError, match="student"):
        FeaturesTask(features_config()).check_outputs(outputs, "student")


def test_task_accepts_an_embedding() -> None:
    FeaturesTask(features_config()).check_outputs({"embedding": torch.zeros(2, 4)}, "teacher")


def test_task_loss_is_a_zero_on_the_graph() -> None:
    weight = torch.ones(3, requires_grad=True)
    outputs = {"embedding": (weight * torch.arange(3.0)).unsqueeze(0)}
    loss = FeaturesTask(features_config()).loss(outputs, {"target": torch.tensor([0])})
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert torch.equal(weight.grad, torch.zeros(3))


class _Items(Dataset):
    def __init__(self, name: str, targets: list[int]) -> None:
        self.name, self.targets = name, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input": torch.tensor([float(index)]), "target": self.targets[index], "source": self.name}


def test_eval_set_puts_memory_before_val() -> None:
    items = KNNEvalSet(_Items("train", [0, 1, 2]), _Items("val", [2, 0]))
    assert len(items) == 5
    read = [items[i] for i in range(5)]
    assert [(r["source"], r["target"], r["memory"]) for r in read] == [
        ("train", 0, True),
        ("train", 1, True),
        ("train", 2, True),
        ("val", 2, False),
        ("val", 0, False),
    ]


def test_eval_set_with_a_subset_memory_and_without_memory() -> None:
    items = KNNEvalSet(Subset(_Items("train", [0, 1, 2, 3]), [1, 3]), _Items("val", [5]))
    assert [items[i]["target"] for i in range(3)] == [1, 3, 5] and not items[2]["memory"]
    val_only = KNNEvalSet(None, _Items("val", [4, 5]))
    assert len(val_only) == 2 and [val_only[i]["target"] for i in range(2)] == [4, 5]
    assert [val_only[i]["memory"] for i in range(2)] == [True, True]  # leave-one-out: val is the memory


# --- config -----------------------------------------------------------------------------------------------------


def test_features_task_weight_is_zero() -> None:
    assert features_config().distill.task_weight == 0.0
    assert features_config(task_weight=0, terms=TERMS).distill.task_weight == 0.0


def test_features_refuses_a_task_weight() -> None:
    with pytest.raises(ConfigError, match="task_weight"):
        features_config(task_weight=0.5, terms=TERMS)


def test_features_refuses_a_phase_task_weight() -> None:
    with pytest.raises(ConfigError, match="task_weight"):
        features_config(terms=TERMS, phases=[{"until_epoch": 1, "task_weight": 0.3}])


def test_features_refuses_no_terms() -> None:
    with pytest.raises(ConfigError, match="distill.terms"):
        features_config(terms=[])


def test_multicrop_needs_the_features_task(make_config) -> None:
    with pytest.raises(ConfigError, match="multicrop"):
        make_config(data={"multicrop": {"global_crops": 2, "local_crops": 2}})


def test_multicrop_with_the_features_task_is_accepted() -> None:
    raw = {"task": "features", "teacher": TEACHER, "student": TEACHER, "distill": {"terms": TERMS}}
    config = _checked({**raw, "data": {"multicrop": {"local_crops": 3}}})
    assert config.data.multicrop.locals == 3


def test_linear_fitness_needs_the_linear_probe() -> None:
    raw = {"task": "features", "teacher": TEACHER, "student": TEACHER, "distill": {"terms": TERMS}}
    with pytest.raises(ConfigError, match="linear_probe"):
        _checked({**raw, "features": {"fitness": "linear"}})
    accepted = _checked({**raw, "features": {"fitness": "linear", "linear_probe": True}})
    assert accepted.features.fitness == "linear"


def test_crd_with_multicrop_is_refused() -> None:
    """CRD keeps one memory row per sample; multi-crop gives several rows per sample."""
    crd = {"loss": "crd", "student": "embedding", "teacher": "embedding"}
    raw = {"task": "features", "teacher": TEACHER, "student": TEACHER, "distill": {"terms": [crd]}}
    with pytest.raises(ConfigError, match="crd keeps one memory row per sample"):
        _checked({**raw, "data": {"multicrop": {}}})
    assert _checked(raw).distill.terms[0].loss == "crd"  # without multi-crop CRD is fine


@pytest.mark.parametrize("head", [{"num_classes": 10}, {"kwargs": {"num_classes": 10}}])
def test_a_classifier_head_in_a_features_run_is_refused(head: dict) -> None:
    student = {**TEACHER, **head}
    with pytest.raises(ConfigError, match="student sets num_classes=10"):
        _checked({"task": "features", "teacher": TEACHER, "student": student, "distill": {"terms": TERMS}})


def test_compare_refuses_a_label_free_task() -> None:
    """A student alone has nothing to learn from without labels: the comparison is refused with why."""
    from kdforge.app.compare import baseline_config

    with pytest.raises(ConfigError, match="no student-alone baseline"):
        baseline_config(features_config())
