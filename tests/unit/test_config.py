"""Config loading: YAML files merged in order, ``--set`` overrides, and errors that say how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdforge.app.api import load_config as load_checked
from kdforge.core.config import RunConfig, apply_override, deep_merge, load_config
from kdforge.core.errors import ConfigError

STUDENT = {
    "student": {"source": "import", "name": "kdforge.models.zoo:cnn"},
    "teacher": {"source": "import", "name": "kdforge.models.zoo:cnn"},
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _config(overrides: list[str], **extra: dict) -> RunConfig:
    """Loaded as a run loads it: the schema, then every name it gives resolved (terms, optimizer, task)."""
    return load_checked(overrides=overrides, base={**STUDENT, **extra})


def _error(overrides: list[str], **extra: dict) -> str:
    with pytest.raises(ConfigError) as info:
        _config(overrides, **extra)
    return str(info.value)


# --- merging files --------------------------------------------------------------------------------


def test_later_file_wins_and_mappings_merge_key_by_key(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.yaml", {**STUDENT, "train": {"epochs": 3, "optimizer": {"lr": 0.1, "name": "sgd"}}})
    second = _write(tmp_path / "b.yaml", {"train": {"optimizer": {"lr": 0.5}}, "seed": 7})
    config = load_config([first, second])
    assert config.train.optimizer.lr == 0.5  # later file wins
    assert config.train.optimizer.name == "sgd"  # sibling keys of the earlier file survive
    assert config.train.epochs == 3
    assert config.seed == 7


def test_file_order_matters(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {**STUDENT, "seed": 1})
    b = _write(tmp_path / "b.yaml", {"seed": 2})
    assert load_config([a, b]).seed == 2
    assert load_config([b, a]).seed == 1


def test_lists_are_replaced_not_concatenated(tmp_path: Path) -> None:
    two_terms = {
        "distill": {"terms": [{"loss": "kd", "weight": 0.3}, {"loss": "fitnet", "student": "a", "teacher": "b"}]}
    }
    a = _write(tmp_path / "a.yaml", {**STUDENT, **two_terms})
    b = _write(tmp_path / "b.yaml", {"distill": {"terms": [{"loss": "kd", "weight": 0.9}]}})
    terms = load_config([a, b]).distill.terms
    assert [(t.loss, t.weight) for t in terms] == [("kd", 0.9)]


def test_deep_merge_does_not_mutate_inputs() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}}
    update = {"a": {"c": [3]}}
    merged = deep_merge(base, update)
    assert merged == {"a": {"b": 1, "c": [3]}}
    assert base == {"a": {"b": 1, "c": [1, 2]}}
    merged["a"]["c"].append(4)
    assert update == {"a": {"c": [3]}}


def test_files_then_overrides(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {**STUDENT, "train": {"epochs": 3}})
    assert load_config([a], overrides=["train.epochs=9"]).train.epochs == 9


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config([missing])


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([path])


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: [1, \n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([path])


# --- overrides ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "read", "expected"),
    [
        ("train.epochs=5", lambda c: c.train.epochs, 5),
        ("train.optimizer.lr=3e-4", lambda c: c.train.optimizer.lr, 3e-4),
        (
            "log.loggers=[csv, {name: wandb, kwargs: {mode: offline}}]",
            lambda c: [(s.name, s.kwargs) for s in c.log.loggers],
            [("csv", {}), ("wandb", {"mode": "offline"})],
        ),
        ("data.mean=[0.5, 0.5, 0.5]", lambda c: c.data.mean, (0.5, 0.5, 0.5)),
        ("output.name=my run", lambda c: c.output.name, "my run"),
        ("output.name='123'", lambda c: c.output.name, "123"),  # quoted YAML stays a string
        ("data.labelled_per_class=", lambda c: c.data.labelled_per_class, None),  # empty value is null
        ("train.ema={decay: 0.99}", lambda c: c.train.ema.decay, 0.99),
    ],
)
def test_override_values_are_parsed_as_yaml(override: str, read, expected) -> None:
    assert read(_config([override])) == expected


def test_override_creates_missing_sections() -> None:
    raw: dict = {}
    apply_override(raw, "train.optimizer.lr=0.5")
    assert raw == {"train": {"optimizer": {"lr": 0.5}}}


def test_override_list_item_by_index() -> None:
    terms = {"terms": [{"loss": "kd", "weight": 1.0}, {"loss": "fitnet", "student": "s", "teacher": "t"}]}
    config = _config(["distill.terms.0.weight=0.5", "distill.terms.1.student=other"], distill=terms)
    assert config.distill.terms[0].weight == 0.5
    assert config.distill.terms[1].params() == {"student": "other", "teacher": "t"}


def test_override_negative_list_index() -> None:
    raw = {"distill": {"terms": [{"loss": "kd"}, {"loss": "kd"}]}}
    apply_override(raw, "distill.terms.-1.weight=2")
    assert raw["distill"]["terms"] == [{"loss": "kd"}, {"loss": "kd", "weight": 2}]


def test_override_replaces_a_whole_list() -> None:
    config = _config(["distill.terms=[{loss: kd, weight: 0.25, temperature: 2}]"])
    assert [(t.loss, t.weight, t.params()) for t in config.distill.terms] == [("kd", 0.25, {"temperature": 2})]


@pytest.mark.parametrize("index", ["5", "x", "-3"])
def test_override_bad_list_index(index: str) -> None:
    raw = {"distill": {"terms": [{"loss": "kd"}, {"loss": "kd"}]}}
    with pytest.raises(ConfigError, match=rf"distill\.terms.*{index!r}.*list of 2 items"):
        apply_override(raw, f"distill.terms.{index}.weight=1")


def test_override_malformed_negative_index_is_a_config_error() -> None:
    raw = {"distill": {"terms": [{"loss": "kd"}]}}
    with pytest.raises(ConfigError):
        apply_override(raw, "distill.terms.--1.weight=1")


@pytest.mark.parametrize("item", ["train.epochs", "=5", ""])
def test_override_without_key_or_equals(item: str) -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_override({}, item)


def test_override_through_a_scalar_list_item() -> None:
    with pytest.raises(ConfigError, match="'data.mean.0.x' goes inside a value that is not a mapping"):
        apply_override({"data": {"mean": [0.5, 0.5]}}, "data.mean.0.x.y=1")


def test_override_key_of_a_scalar_list_item() -> None:
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_override({"data": {"mean": [0.5, 0.5]}}, "data.mean.0.x=1")


# --- errors on unknown keys and bad values --------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "path", "suggestion"),
    [
        ("train.optimiser.lr=0.1", "train.optimiser", "optimizer"),
        ("data.batchsize=8", "data.batchsize", "batch_size"),
        ("train.optimizer.learning_rat=0.1", "train.optimizer.learning_rat", None),
        ("train.ema.decai=0.9", "train.ema.decai", "decay"),  # inside an optional section
        ("studnet.name=x", "studnet", "student"),  # top level
    ],
)
def test_unknown_key_names_full_path_and_nearest_key(override: str, path: str, suggestion: str | None) -> None:
    message = _error([override])
    assert repr(path) in message
    if suggestion is not None:
        assert f"Did you mean {suggestion!r}" in message


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    message = _error(["train.optimizer.zzzzzz=1"])
    assert "'train.optimizer.zzzzzz'" in message
    for key in ("lr", "weight_decay", "momentum", "betas"):
        assert key in message


def test_unknown_key_inside_teacher_spec() -> None:
    message = _error(["teacher.nmae=resnet"], teacher={"name": "x"})
    assert "'teacher.nmae'" in message
    assert "'name'" in message


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("train.epochs=ten", "train.epochs", "'ten'"),
        ("train.epochs=0", "train.epochs", "0"),  # below the minimum
        ("data.batch_size=-4", "data.batch_size", "-4"),
        ("train.optimizer.name=adam", "train.optimizer.name", "'adam'"),
        ("train.clip_grad_norm=abc", "train.clip_grad_norm", "'abc'"),
    ],
)
def test_bad_value_names_key_path_and_value(override: str, path: str, value: str) -> None:
    message = _error([override])
    assert repr(path) in message
    assert value in message


def test_bad_list_item_value_names_index_path() -> None:
    message = _error(["distill.terms.0.weight=heavy"], distill={"terms": [{"loss": "kd"}]})
    assert "'distill.terms.0.weight'" in message
    assert "'heavy'" in message


def test_bad_value_of_union_field_names_key_path_and_value() -> None:
    message = _error(["student.input.size=abc"])
    assert "'student.input.size'" in message
    assert "'student.input.size.int'" not in message
    assert "'abc'" in message


def test_several_errors_are_all_reported() -> None:
    message = _error(["train.epochs=ten", "data.batchsize=8"])
    assert "'train.epochs'" in message
    assert "'data.batchsize'" in message


def test_missing_student_is_reported() -> None:
    with pytest.raises(ConfigError, match="'student'.*required"):
        load_config(overrides=["seed=1"])


@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16"])
def test_amp_values(amp: str) -> None:
    assert _config([f"train.amp={amp}"]).train.amp == amp


def test_amp_off_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("student: {name: x}\ntrain:\n  amp: off\n")
    assert load_config([path]).train.amp == "off"
    assert _config(["train.amp=off"]).train.amp == "off"


# --- teacher and terms ----------------------------------------------------------------------------


def test_teacher_null_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("student: {name: resnet18}\nteacher: null\n")
    assert load_config([path]).teacher is None


@pytest.mark.parametrize("value", ["null", "none", "None", ""])
def test_teacher_can_be_removed_by_override(value: str) -> None:
    config = _config([f"teacher={value}"], teacher={"name": "resnet50"})
    assert config.teacher is None


def test_teacher_defaults_to_none_and_accepts_a_spec() -> None:
    assert load_config(base={"student": STUDENT["student"]}).teacher is None
    config = _config(["teacher={name: resnet50, num_classes: 10}"])
    assert config.teacher is not None
    assert (config.teacher.source, config.teacher.name, config.teacher.num_classes) == (
        "timm",
        "resnet50",
        10,
    )


def test_term_extra_params_are_passed_through() -> None:
    kd = {"loss": "kd", "weight": 0.7, "temperature": 2.0, "student": "logits"}
    fitnet = {"loss": "fitnet", "student": "s1", "teacher": "t1"}
    config = _config([], distill={"terms": [kd, fitnet]})
    kd_term, fitnet_term = config.distill.terms
    assert (kd_term.loss, kd_term.weight) == ("kd", 0.7)
    assert kd_term.params() == {"temperature": 2.0, "student": "logits"}
    assert (fitnet_term.weight, fitnet_term.params()) == (1.0, {"student": "s1", "teacher": "t1"})


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ({"loss": "kdd"}, r"distill\.terms\.1': unknown distillation loss 'kdd'.*Did you mean 'kd'"),
        ({"loss": "kd", "temprature": 2}, r"distill\.terms\.1': .*no parameter 'temprature'.*'temperature'"),
        ({"loss": "fitnet", "student": "s"}, r"distill\.terms\.1': .*'fitnet' needs teacher"),
    ],
)
def test_terms_are_checked_at_config_time(term: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _config([], distill={"terms": [{"loss": "kd"}, term]})


def test_term_params_returns_a_copy() -> None:
    config = _config([], distill={"terms": [{"loss": "kd", "temperature": 2.0}]})
    term = config.distill.terms[0]
    term.params()["temperature"] = 99
    assert term.params() == {"temperature": 2.0}


def test_to_dict_round_trips() -> None:
    config = _config(["train.epochs=4", "distill.terms=[{loss: kd, temperature: 3}]"])
    again = load_config(base=config.to_dict())
    assert again == config


@pytest.mark.parametrize(("value", "loggers"), [("false", []), ("true", ["tensorboard"])])
def test_an_old_runs_tensorboard_switch_is_read_as_the_loggers_list(value: str, loggers: list[str]) -> None:
    with pytest.warns(FutureWarning, match=r"read as log\.loggers"):
        config = _config([f"log.tensorboard={value}"])
    assert [spec.name for spec in config.log.loggers] == loggers
    with pytest.raises(ConfigError, match="log.tensorboard and log.loggers are both set"):
        _config([f"log.tensorboard={value}", "log.loggers=[csv]"])
