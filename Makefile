# Two commands on a fresh machine with Python 3.10+:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: setup run test lint format viz screenshot clean-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

run: setup            ## set up, then the whole chain on the embedded synthetic data
	$(BIN)/kedro run

test: setup           ## set up, then the test suite
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

viz: setup
	$(BIN)/kedro viz run

screenshot:           ## render the latest HTML report in headless Chromium (apt-get install chromium)
	chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
	  --disable-component-update --disable-sync --user-data-dir="$$(mktemp -d)" \
	  --window-size=1300,9000 --screenshot=data/08_reporting/report_screenshot.png \
	  "file://$(CURDIR)/$$(ls -d data/08_reporting/report.html/*/ | sort | tail -n 1)report.html"

clean-data:           ## remove every generated artefact under data/ (keeps the folders)
	find data -type f ! -name .gitkeep -delete
