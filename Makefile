# kdforge: `make demo` and `make test` set up .venv when needed, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint bench bench-yolo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# opencv-python (an ultralytics dependency) needs libGL; without it, keep only the headless build
	$(PY) -c 'import cv2' 2>/dev/null || { $(PY) -m pip uninstall --quiet -y opencv-python && \
		$(PY) -m pip install --quiet --force-reinstall --no-deps opencv-python-headless; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdforge demo

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_speed.py

bench-yolo: $(STAMP)
	$(PY) benchmarks/bench_yolo.py --out runs/bench_yolo --epochs 60 --teacher-epochs 200 --seeds 0 1 2

clean:
	rm -rf runs .pytest_cache
