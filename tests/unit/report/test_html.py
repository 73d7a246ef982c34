"""write_report: every logged number lands in a chart, runs overlay, tables compare, and nothing is unescaped."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kdforge.app.report.html import write_report
from kdforge.app.report.runs import ReportError, run_names
from kdforge.core.errors import KDForgeError

SVG = "{http://www.w3.org/2000/svg}"
CNN = "kdforge.models.zoo:cnn"


def kd_records(scale: float = 1.0, steps: int = 6, epochs: int = 3) -> list[dict[str, Any]]:
    """What a KD run logs: train records per step, then per epoch a schedule and a val record."""
    records: list[dict[str, Any]] = [
        {"kind": "teacher", "step": 0, "teacher": "teacher", "teacher/teacher/val/acc1": 95.0}
    ]
    for step in range(1, steps + 1):
        task, kd = 2.0 * scale / step**2, 8.0 * scale / step**2
        records.append(
            {
                "kind": "train",
                "step": step,
                "epoch": step * epochs / steps,
                "loss": 0.5 * task + 0.5 * kd,
                "loss/task": task,
                "loss/kd": kd,
                "wloss/task": 0.5 * task,
                "wloss/kd": 0.5 * kd,
                "lr": 0.01 / step,
                "samples_per_s": 1000.0 + step,
                "nonfinite_total": 0,
                "time/data_ms": 1.0,
                "time/teacher_ms": 3.0,
                "time/student_ms": 4.0,
                "time/optimizer_ms": 0.5,
            }
        )
    for epoch in range(1, epochs + 1):
        settings = {"task_weight": 0.5, "phase": -1, "weight/kd": 0.5, "kd/temperature": 5.0 - epoch}
        records.append({"kind": "schedule", "step": (epoch - 1) * 2, "epoch": epoch, **settings})
        acc = 60.0 * scale + 10 * epoch
        records.append({"kind": "val", "step": epoch * 2, "epoch": epoch, "val/acc1": acc, "fitness": acc})
    return records


def _profile(**costs: float) -> dict[str, Any]:
    """A model profile as summary.json holds it, for an 8x8 one-channel input on one thread."""
    return {**costs, "input_shape": [1, 8, 8], "threads": 1}


def summary(acc: float, student: str = CNN, profile: bool = False) -> dict[str, Any]:
    teacher = {"teacher": "teacher", "name": CNN, "params": 40_000, "metrics": {"val/acc1": 95.0}}
    entry = {"name": student, "params": 4_000, "metrics": {"val/acc1": acc}, "last_metrics": {"val/acc1": acc}}
    if profile:
        teacher["profile"] = _profile(size_bytes=160_000, macs=2_000_000, latency_ms=2.0)
        entry["profile"] = _profile(size_bytes=16_000, macs=150_000, latency_ms=0.5)
    return {
        "task": "classification",
        "student": entry,
        "teacher": teacher,
        "teachers": [teacher],
        "compression": 10.0,
        "epochs_run": 3,
        "best_epoch": 3,
        "steps": 6,
        "nonfinite_steps": 0,
    }


def write_run(path: Path, records: list[dict[str, Any]], run_summary: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if run_summary is not None:
        (path / "summary.json").write_text(json.dumps(run_summary))
    return path


def charts(page: str) -> dict[str, ET.Element]:
    """Each chart's SVG by its title."""
    found = {}
    for svg in re.findall(r"<svg class=\"chart\".*?</svg>", page, flags=re.DOTALL):
        root = ET.fromstring(svg)
        found[root.find(f"{SVG}title").text] = root
    return found


def lines(chart: ET.Element) -> dict[str, int]:
    """Point count of each polyline, by the series name in its tooltip."""
    return {p.find(f"{SVG}title").text: len(p.get("points").split()) for p in chart.iter(f"{SVG}polyline")}


def report(tmp_path: Path, *runs: Path) -> str:
    return write_report(list(runs), tmp_path / "out" / "report.html").read_text()


def test_one_run_draws_every_logged_number(tmp_path: Path) -> None:
    page = report(tmp_path, write_run(tmp_path / "kd", kd_records(), summary(90.0)))
    found = charts(page)
    assert set(found) == {
        "loss (raw)",
        "loss (weighted)",
        "val/acc1",
        "fitness",
        "learning rate",
        "loss weights",
        "temperature",
        "time per step (ms)",
        "throughput (samples/s)",
    }
    assert lines(found["loss (raw)"]) == {"total": 6, "task": 6, "kd": 6}
    assert lines(found["loss (weighted)"]) == {"task": 6, "kd": 6}
    assert lines(found["time per step (ms)"]) == {"data": 6, "teacher": 6, "student": 6, "optimizer": 6}
    assert lines(found["loss weights"]) == {"task": 3, "kd": 3}
    assert lines(found["temperature"]) == {"kd": 3}
    assert lines(found["val/acc1"]) == {"val/acc1": 3}
    assert "teacher 95" in "".join(found["val/acc1"].itertext())  # the teacher's accuracy as a reference line
    assert "(log scale)" in "".join(found["loss (raw)"].itertext())  # falls from 8 to 0.06
    assert "Best metrics compared" not in page  # only with several runs


def test_two_runs_overlay_in_every_chart_and_are_compared(tmp_path: Path) -> None:
    base = write_run(tmp_path / "baseline", kd_records(scale=0.5), summary(70.0))
    kd = write_run(tmp_path / "distilled", kd_records(), summary(90.0))
    page = report(tmp_path, base, kd)
    found = charts(page)
    assert lines(found["val/acc1"]) == {"baseline": 3, "distilled": 3}
    assert lines(found["loss (raw)"]) == {
        f"{run} · {part}": 6 for run in ("baseline", "distilled") for part in ("total", "task", "kd")
    }
    assert all(
        len(lines(chart)) == 2 * len(lines(charts(report(tmp_path, kd))[title])) for title, chart in found.items()
    )
    comparison = page.split("Best metrics compared", 1)[1].split("</table>", 1)[0]
    assert "<td>baseline</td><td class=num>70</td>" in comparison
    assert "<td>distilled</td><td class=num>90 (+20)</td>" in comparison
    assert "student (baseline)" in page and "student (distilled)" in page


def test_run_names_add_parent_folders_until_they_differ(tmp_path: Path) -> None:
    assert run_names([tmp_path / "a" / "run", tmp_path / "b" / "run"]) == ["a/run", "b/run"]
    assert run_names([tmp_path / "x", tmp_path / "y"]) == ["x", "y"]


def test_every_string_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    records = [*kd_records(), {"kind": "warning", "step": 3, "epoch": 1.5, "message": evil}]
    run = write_run(tmp_path / "<script>x", records, summary(90.0, student=f"pkg:{evil}"))
    page = report(tmp_path, run)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the warning and the student's name, shown as text
    assert "&lt;script&gt;x" in page  # the run name


def test_missing_metrics_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=re.escape(str(tmp_path / "empty" / "metrics.jsonl"))) as info:
        write_report([tmp_path / "empty"], tmp_path / "report.html")
    assert isinstance(info.value, KDForgeError)
    assert not (tmp_path / "report.html").exists()


def test_a_damaged_line_is_an_error_but_a_cut_off_last_line_is_dropped(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", kd_records())
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"kind": "train", "st')  # killed while writing
    assert lines(charts(report(tmp_path, run))["loss (raw)"])["total"] == 6
    (run / "metrics.jsonl").write_text("{oops\n" + text)
    with pytest.raises(ReportError, match=r"metrics.jsonl:1 is not a JSON record"):
        report(tmp_path, run)


def test_a_run_without_validation_or_summary_has_no_such_chart(tmp_path: Path) -> None:
    records = [r for r in kd_records() if r["kind"] == "train"]
    page = report(tmp_path, write_run(tmp_path / "run", records))
    assert "val/acc1" not in charts(page) and "Validation" not in page
    assert "loss (raw)" in charts(page)
    assert "no summary.json" in page


def test_an_empty_log_gives_a_page_with_a_note(tmp_path: Path) -> None:
    page = report(tmp_path, write_run(tmp_path / "run", []))
    assert charts(page) == {} and "metrics.jsonl is empty" in page


def test_new_kinds_and_keys_are_drawn_and_warnings_listed(tmp_path: Path) -> None:
    per_step = [
        {"kind": "diagnostics", "step": s, "grad_share/task": 0.3, "grad_share/kd": 0.7, "grad_norm/kd": 1.5}
        for s in (2, 4, 6)
    ]
    per_eval = [
        {"kind": "diagnostics", "step": 2 * e, "epoch": e, "val/agreement": 0.8 + e / 100, "val/teacher_kl": 0.2}
        for e in (1, 2, 3)
    ]
    others = [
        {"kind": "warning", "step": 4, "message": "task loss stalls"},
        {"kind": "novel", "step": 1, "zeta/a": 1.0},
    ]
    page = report(tmp_path, write_run(tmp_path / "run", kd_records() + per_step + per_eval + others, summary(90.0)))
    found = charts(page)
    assert lines(found["grad_share"]) == {"task": 3, "kd": 3}
    assert lines(found["val/agreement"]) == {"val/agreement": 3}
    assert {"grad_norm", "val/teacher_kl", "zeta"} <= set(found)
    axis = {title: chart.find(f"{SVG}text[@class='axis']").text for title, chart in found.items()}
    assert (axis["grad_share"], axis["val/agreement"]) == ("step", "epoch")  # each chart by what its records carry
    assert "Other: novel" in page
    assert "<li>step 4: task loss stalls</li>" in page


def test_resumed_steps_and_non_finite_values(tmp_path: Path) -> None:
    records = kd_records()
    records += [dict(r, loss=0.1) for r in records if r["kind"] == "train" and r["step"] > 4]  # resumed at step 4
    records.append({"kind": "train", "step": 7, "epoch": 3.5, "loss": "nan", "loss/task": 0.2, "nonfinite_total": 1})
    found = charts(report(tmp_path, write_run(tmp_path / "run", records)))
    assert lines(found["loss (raw)"]) == {"total": 6, "task": 7, "kd": 6}  # logged twice: once; NaN: left out
    assert lines(found["nonfinite_total"]) == {"nonfinite_total": 7}  # drawn once it leaves 0


def test_profiles_fill_the_teacher_vs_student_table(tmp_path: Path) -> None:
    page = report(tmp_path, write_run(tmp_path / "run", kd_records(), summary(90.0, profile=True)))
    table = page.split("Teacher vs student", 1)[1].split("</table>", 1)[0]
    for cell in ("156.2 KiB", "2.00M", "2 ms", "15.6 KiB", "150.00K", "0.5 ms", "10.0x fewer params, 4.0x faster"):
        assert f">{cell}</td>" in table
