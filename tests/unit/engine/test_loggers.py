"""Logger backends: a user's own from an import path receives every record; CSV, TensorBoard, W&B (offline) and
MLflow (a local store) runs are written and read back with those libraries' own readers; a failing backend warns
once and the run goes on; bad names are named errors."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from kdforge.app.pipeline import train
from kdforge.app.resume import resume_config
from kdforge.core.config import PluginSpec
from kdforge.core.errors import ConfigError
from kdforge.engine.loggers import Logger, RunInfo, RunLog

HERE = __name__
RECEIVED: dict[str, Any] = {}  # what the last RecordingLogger saw


class RecordingLogger(Logger):
    """Keeps everything it is sent."""

    def __init__(self, tag: str = "") -> None:
        RECEIVED.clear()
        RECEIVED.update(tag=tag, records=[], started=None, finished=None, closed=False)

    def start(self, run: RunInfo) -> None:
        RECEIVED["started"] = run

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        RECEIVED["records"].append({"kind": kind, "step": step, **values})

    def finish(self, summary: dict[str, Any], checkpoint: Path | None) -> None:
        RECEIVED["finished"] = (summary, checkpoint)

    def close(self) -> None:
        RECEIVED["closed"] = True


class BrokenLogger(Logger):
    """Fails on its third record, like a tracking server that goes away."""

    def __init__(self) -> None:
        self.calls = 0

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == 3:
            raise ConnectionError("tracking server unreachable")


def _jsonl(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(a: Any, b: Any) -> bool:
    """Equal, with metrics.jsonl's "nan" strings standing for NaN."""
    if isinstance(b, str) and isinstance(a, float) and not math.isfinite(a):
        return str(a) == b
    return a == b


def test_a_logger_from_an_import_path_receives_every_record_and_the_summary(make_config):
    spec = {"name": f"{HERE}:RecordingLogger", "kwargs": {"tag": "mine"}}
    result = train(make_config(log={"loggers": [spec], "log_checkpoint": True}, train={"epochs": 2}))
    written = _jsonl(result.run_dir)
    got = RECEIVED["records"]
    assert len(got) == len(written) > 5 and RECEIVED["tag"] == "mine"
    for mine, line in zip(got, written, strict=True):
        assert mine.keys() == line.keys() and all(_same(mine[k], line[k]) for k in mine)
    assert {r["kind"] for r in got} >= {"teacher", "train", "val"}
    started = RECEIVED["started"]
    assert started.run_dir == result.run_dir and started.config["train"]["epochs"] == 2 and not started.resumed
    summary, checkpoint = RECEIVED["finished"]
    assert summary == json.loads((result.run_dir / "summary.json").read_text())
    assert checkpoint == result.files["best"] and checkpoint.is_file()  # log_checkpoint: the best is sent
    assert RECEIVED["closed"]


def test_a_logger_that_fails_warns_once_and_the_run_goes_on(make_config, capsys):
    loggers = [f"{HERE}:BrokenLogger", {"name": f"{HERE}:RecordingLogger"}]
    result = train(make_config(log={"loggers": loggers}, train={"epochs": 2}))
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("BrokenLogger' failed in log()") == 1
    assert "ConnectionError: tracking server unreachable" in err and "metrics.jsonl keeps every record" in err
    assert len(RECEIVED["records"]) == len(_jsonl(result.run_dir))  # the others and metrics.jsonl lose nothing
    assert result.summary["steps"] == 12


def test_csv_tables_per_kind_widen_when_a_record_brings_a_new_column(tmp_path):
    log = RunLog(tmp_path, {"csv": _logger("csv")})
    log.start("run", {})
    log.log("train", 1, {"loss": 1.5})
    log.log("train", 2, {"loss": 1.25, "loss/kd": 0.5})  # a term switched on by a phase
    log.log("val", 2, {"val/acc1": 40.0, "fitness": float("nan")})
    log.close()
    with (tmp_path / "csv" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"step": "1", "loss": "1.5", "loss/kd": ""}, {"step": "2", "loss": "1.25", "loss/kd": "0.5"}]
    with (tmp_path / "csv" / "val.csv").open() as f:
        assert list(csv.DictReader(f)) == [{"step": "2", "val/acc1": "40.0", "fitness": "nan"}]
    resumed = RunLog(tmp_path, {"csv": _logger("csv")})  # a resumed run appends under the same header
    resumed.start("run", {}, resumed=True)
    resumed.log("train", 3, {"loss": 1.0, "loss/kd": 0.25})
    with (tmp_path / "csv" / "train.csv").open() as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_tensorboard_scalars_read_back_with_tensorboards_reader(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(make_config(log={"loggers": ["tensorboard"]}, train={"epochs": 2}))
    events = EventAccumulator(str(result.run_dir / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "loss/kd", "val/acc1", "train/lr"} <= set(tags)
    val = [r for r in _jsonl(result.run_dir) if r["kind"] == "val"]
    assert [(e.step, e.value) for e in events.Scalars("val/acc1")] == [
        (r["step"], pytest.approx(r["val/acc1"])) for r in val
    ]


def test_wandb_offline_run_holds_the_config_metrics_and_summary(make_config):
    pytest.importorskip("wandb")
    spec = {"name": "wandb", "kwargs": {"mode": "offline", "project": "kdforge-test", "tags": ["ci"]}}
    result = train(make_config(log={"loggers": [spec]}, train={"epochs": 2}))
    path = _written(result.run_dir / "wandb", "offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.project == "kdforge-test" and list(run.tags) == ["ci"] and run.display_name == result.run_dir.name
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["epochs"] == 2 and config["distill"]["terms"][0]["loss"] == "kd"
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    val = [r for r in _jsonl(result.run_dir) if r["kind"] == "val"]
    logged = [(h["_step"], h["val/acc1"]) for h in history if "val/acc1" in h]
    assert logged == [(r["step"], pytest.approx(r["val/acc1"])) for r in val]
    assert any("loss/kd" in h for h in history)
    summary = {_key(i): json.loads(i.value_json) for r in records if r.HasField("summary") for i in r.summary.update}
    assert summary["steps"] == result.summary["steps"] == 12
    assert summary["student"]["metrics"] == pytest.approx(result.summary["student"]["metrics"])
    assert (result.run_dir / "wandb-run-id").read_text().strip() in path.name


def test_mlflow_local_store_holds_the_params_metrics_and_summary(make_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # nothing lands in the working directory either way
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    kwargs = {"tracking_uri": uri, "experiment": "kd", "tags": {"team": "vision"}, "artifact_location": artifacts}
    spec = {"name": "mlflow", "kwargs": kwargs}
    result = train(make_config(log={"loggers": [spec], "log_checkpoint": True}, train={"epochs": 2}))
    client = MlflowClient(uri)
    run = client.get_run((result.run_dir / "mlflow-run-id").read_text().strip())
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["train.epochs"] == "2" and run.data.params["distill.terms"].startswith("[{")
    assert run.data.tags["team"] == "vision"
    val = [r for r in _jsonl(result.run_dir) if r["kind"] == "val"]
    history = client.get_metric_history(run.info.run_id, "val/acc1")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["val/acc1"])) for r in val]
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads((result.run_dir / "summary.json").read_text())
    assert [f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert list((tmp_path / "artifacts").rglob("best.pt")) and not (tmp_path / "mlruns").exists()

    config, run_dir, checkpoint = resume_config(result.run_dir, ["train.epochs=3"])
    train(config, resume=checkpoint, run_dir=run_dir)  # a resumed run continues the same MLflow run
    history = client.get_metric_history(run.info.run_id, "val/acc1")
    assert [m.step for m in history] == [r["step"] for r in val] + [18]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("wandbb", r"log\.loggers\.0.*unknown logger 'wandbb'.*Did you mean 'wandb'"),
        ({"name": "csv", "kwargs": {"directry": "x"}}, r"logger 'csv' has no parameter 'directry'.*'directory'"),
        (f"{HERE}:RecordingLoger", r"no attribute 'RecordingLoger'.*Did you mean 'RecordingLogger'"),
        (f"{HERE}:_jsonl", r"not a kdforge\.engine\.loggers\.Logger subclass"),
    ],
)
def test_a_bad_logger_is_named_before_the_run_starts(make_config, entry, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_config(log={"loggers": [entry]})
    assert not (tmp_path / "runs").exists()


def test_a_logger_whose_library_is_missing_names_the_extra(make_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger 'wandb' needs wandb.*pip install 'kdforge\[wandb\]'"):
        make_config(log={"loggers": ["wandb"]})


def _logger(name: str) -> Logger:
    from kdforge.engine.loggers import build_loggers

    return build_loggers([PluginSpec(name=name)])[name]


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file (wandb's own `Record` message), unframed from its LevelDB-style log:
    a 7-byte header, then 32 KiB blocks of [crc32 (4), length (2), type (1), data] chunks."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item: Any) -> str:
    """A W&B history or summary item's name (``val/acc1`` arrives split into its nested parts)."""
    return item.key or "/".join(item.nested_key)


def _written(folder: Path, pattern: str) -> Path:
    """The one file matching `pattern`: W&B's service process writes it, so give a busy machine a moment."""
    for _ in range(300):
        found = list(folder.glob(pattern))
        if found:
            (path,) = found
            return path
        time.sleep(0.1)
    raise AssertionError(f"nothing matches {pattern} in {folder}: {sorted(p.name for p in folder.rglob('*'))}")
