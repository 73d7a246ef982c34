"""Feature distillation without labels: the student learns the teacher's embedding (and tokens, feature maps)
through the distillation terms alone; labels are read only to judge the embedding.

Models are built as backbones (``num_classes=0``): their output is the pooled ``embedding`` (B, D). The
evaluation is DINO's weighted k-NN (Caron et al. 2021, Wu et al. 2018): each val embedding votes with its k
most cosine-similar memory embeddings, weighted ``exp(sim / T)``; optionally a linear probe (logistic
regression) on the same embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from kdforge.core.config import FeaturesConfig, RunConfig
from kdforge.core.errors import ClassCountMismatchError, ConfigError, DataError
from kdforge.data.datasets import UNLABELLED
from kdforge.distill.distiller import student_zero
from kdforge.distill.losses import TERMS
from kdforge.tasks.base import Metrics, Outputs, Task

KNN_QUERY_CHUNK = 1024  # queries scored at once: bounds the (queries x memory) similarity matrix


class FeaturesTask(Task):
    name = "features"
    embeds_only = True
    reads_crops = True

    @classmethod
    def configure(cls, config: RunConfig) -> None:
        """No labelled loss: the task weight is 0 (set to 0 when not given, refused otherwise), the terms teach
        and the models are backbones; a term keeping one memory row per sample cannot read several crops."""
        super().configure(config)
        distill = config.distill
        explicit = [distill.task_weight] if "task_weight" in distill.model_fields_set else []
        if any(w not in (0, None) for w in [*explicit, *(p.task_weight for p in distill.phases)]):
            raise ConfigError(
                "task: features has no labelled loss, so distill.task_weight (and phase task weights) must be 0; "
                "remove them (labels are only read by the k-NN evaluation)."
            )
        distill.task_weight = 0.0
        if not distill.terms:
            raise ConfigError(
                "task: features learns from the teacher only: add distill.terms (e.g. cosine on embedding)."
            )
        for role, spec in {"student": config.student, **config.teacher_specs()}.items():
            classes = spec.num_classes if spec.num_classes is not None else spec.kwargs.get("num_classes")
            if classes not in (None, 0):
                raise ConfigError(
                    f"task: features distils embeddings, but {role} sets num_classes={classes} (a classifier "
                    "head): remove it, so the model is built as a backbone returning its pooled embedding."
                )
        per_sample = [t.loss for t in distill.terms if TERMS.get(t.loss).needs_dataset]
        if config.data.multicrop is not None and per_sample:
            raise ConfigError(
                f"{', '.join(per_sample)} keeps one memory row per sample, but data.multicrop gives several crops per "
                "sample; use cosine / smooth_l1 with multi-crop, or drop data.multicrop for CRD."
            )

    def eval_dataset(self) -> Dataset:
        """The val split, preceded by the k-NN memory (the train split under the evaluation transform) unless
        the memory is the val split itself; items say which they are (``memory``)."""
        from kdforge.data.datasets import build_dataset

        val = super().eval_dataset()
        features = self.config.features
        if features.knn_memory == "val":
            return KNNEvalSet(None, val)
        memory, _ = build_dataset(self.config.data, "train", augment=False)
        limit = features.knn_memory_limit
        if limit is not None and limit < len(memory):
            chosen = torch.randperm(len(memory), generator=torch.Generator().manual_seed(self.config.seed))[:limit]
            memory = Subset(memory, sorted(chosen.tolist()))
        return KNNEvalSet(memory, val)

    def to_outputs(self, raw: Any) -> Outputs:
        """A tensor is the embedding; a tuple or list gives its first element; a dict is the model's own."""
        if isinstance(raw, (tuple, list)):
            raw = raw[0]
        return raw if isinstance(raw, dict) else {"embedding": raw}

    def loss(self, outputs: Outputs, batch: dict[str, Any]) -> torch.Tensor:
        return student_zero(outputs)  # no labelled loss: the terms teach (task_weight is 0)

    def check_outputs(self, outputs: Outputs, role: str) -> None:
        embedding = outputs.get("embedding")
        if embedding is None or embedding.dim() < 2 or embedding.shape[-1] == 0:
            shape = None if embedding is None else tuple(embedding.shape)
            raise ClassCountMismatchError(
                f"task: features needs the {role} to return its pooled embedding (batch, width); got {shape}. "
                "timm and torchvision models are built without their classifier; an import factory must return "
                "the features (or a dict with an 'embedding' entry)."
            )

    def metrics(self) -> Metrics:
        return KNNMetrics(self.config.features, self.num_classes or 1, self.config.features.knn_memory == "val")


class KNNEvalSet(Dataset):
    """The k-NN memory's samples, then the val samples, each marked with ``memory`` (a bool)."""

    def __init__(self, memory: Dataset | None, val: Dataset) -> None:
        self.memory, self.val = memory, val
        self.offset = len(memory) if memory is not None else 0

    def __len__(self) -> int:
        return self.offset + len(self.val)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.offset:
            return {**self.memory[index], "memory": True}
        return {**self.val[index - self.offset], "memory": self.memory is None}


class KNNMetrics(Metrics):
    """k-NN (and linear-probe) accuracy of L2-normalised embeddings; ``val/embedding_std`` (the mean per-dimension
    std of the normalised val embeddings) falls towards 0 when the embedding collapses to one point.

    Args:
        leave_one_out: memory and queries are the same samples; each is classified by the others.
    """

    rows = ("embeddings", "targets", "is_memory")

    def __init__(self, cfg: FeaturesConfig, num_classes: int, leave_one_out: bool) -> None:
        self.cfg, self.num_classes, self.leave_one_out = cfg, num_classes, leave_one_out
        self.embeddings: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.is_memory: list[torch.Tensor] = []

    def update(self, outputs: Outputs, batch: dict[str, Any]) -> None:
        self.embeddings.append(F.normalize(outputs["embedding"].float().flatten(1), dim=1))
        self.targets.append(batch["target"])
        self.is_memory.append(batch["memory"].to(batch["target"].device, torch.uint8))  # gloo gathers no bools

    def names(self) -> list[str]:
        """The keys ``compute()`` reports."""
        k = min(5, self.num_classes)
        names = ["val/knn_acc1", *([f"val/knn_acc{k}"] if k > 1 else []), "val/embedding_std"]
        return [*names, *(["val/linear_acc1"] if self.cfg.linear_probe else []), "fitness"]

    def compute(self) -> dict[str, float]:
        if not self.embeddings:
            return dict.fromkeys(self.names(), 0.0)
        embeddings, targets = torch.cat(self.embeddings).cpu(), torch.cat(self.targets).cpu()
        is_memory, labelled = torch.cat(self.is_memory).cpu().bool(), targets != UNLABELLED
        queries = labelled if self.leave_one_out else labelled & ~is_memory
        memory = labelled & is_memory
        (q, q_targets), (m, m_targets) = (embeddings[queries], targets[queries]), (embeddings[memory], targets[memory])
        if len(m) <= int(self.leave_one_out) or not len(q):
            raise DataError(
                f"k-NN evaluation needs labelled samples: {int(memory.sum())} labelled memory and {len(q)} labelled "
                f"val samples. With an unlabelled train split set features.knn_memory: val (leave-one-out on val)."
            )
        hits = knn_hits(q, q_targets, m, m_targets, self.cfg, self.num_classes, self.leave_one_out)
        k = hits.shape[1]  # the top-k ranks knn_hits scored: min(5, classes)
        results = {"val/knn_acc1": 100.0 * hits[:, 0].float().mean().item()}
        if k > 1:
            results[f"val/knn_acc{k}"] = 100.0 * hits.any(dim=1).float().mean().item()
        results["val/embedding_std"] = q.std(dim=0).mean().item() if len(q) > 1 else 0.0
        if self.cfg.linear_probe:
            results["val/linear_acc1"] = linear_probe_accuracy(q, q_targets, m, m_targets, self.leave_one_out)
        results["fitness"] = results["val/linear_acc1" if self.cfg.fitness == "linear" else "val/knn_acc1"]
        return results


def knn_hits(
    queries: torch.Tensor,
    query_targets: torch.Tensor,
    memory: torch.Tensor,
    memory_targets: torch.Tensor,
    cfg: FeaturesConfig,
    num_classes: int,
    leave_one_out: bool = False,
) -> torch.Tensor:
    """(Q, min(5, C)) bools: whether each query's target is among its top-ranked classes by the weighted vote
    of its ``knn_k`` nearest memory embeddings (cosine; unit-norm inputs). With `leave_one_out` queries and
    memory are the same rows and a sample never votes for itself."""
    k = min(cfg.knn_k, len(memory) - int(leave_one_out))
    top = min(5, num_classes)
    hits = []
    for start in range(0, len(queries), KNN_QUERY_CHUNK):
        sim = queries[start : start + KNN_QUERY_CHUNK] @ memory.T  # (q, M)
        if leave_one_out:
            rows = torch.arange(len(sim))
            sim[rows, rows + start] = -float("inf")
        weights, neighbours = sim.topk(k, dim=1)  # (q, k), most similar first
        # exp(s / T) scaled by exp(-s_max / T): the same ranking, and no overflow at a low temperature
        scores = ((weights - weights[:, :1]) / cfg.knn_temperature).exp()
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, memory_targets[neighbours], scores)  # (q, C)
        ranked = votes.topk(top, dim=1).indices
        hits.append(ranked.eq(query_targets[start : start + KNN_QUERY_CHUNK, None]))
    return torch.cat(hits) if hits else torch.zeros(0, top, dtype=torch.bool)


def linear_probe_accuracy(
    queries: torch.Tensor,
    query_targets: torch.Tensor,
    memory: torch.Tensor,
    memory_targets: torch.Tensor,
    leave_one_out: bool = False,
) -> float:
    """Top-1 % of a logistic regression fitted on the memory's embeddings (5-fold cross-validated predictions
    when memory and queries are the same samples)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probe = LogisticRegression(max_iter=1000)
    if leave_one_out:
        folds = min(5, int(query_targets.unique(return_counts=True)[1].min()))
        predicted = cross_val_predict(probe, queries.numpy(), query_targets.numpy(), cv=max(folds, 2))
    else:
        predicted = probe.fit(memory.numpy(), memory_targets.numpy()).predict(queries.numpy())
    return 100.0 * float((torch.as_tensor(predicted) == query_targets).float().mean())
