# make demo / make test bootstrap .venv from nothing (python3 >= 3.11 and network access to PyPI).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ROWS   ?= 10000000
DEMO   ?= data/demo

.PHONY: demo test lint bench-kernels bench-pipeline clean

$(STAMP): pyproject.toml constraints.txt
	mkdir -p data
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,report]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(PY) -m gpu_vgm.generate --rows $(ROWS) --output $(DEMO)/input --overwrite
	$(PY) -m gpu_vgm.run --input $(DEMO)/input --output $(DEMO)/encoded --overwrite \
		--special-values 0 --learn-rounding
	$(PY) -m gpu_vgm.inverse --input $(DEMO)/encoded --output $(DEMO)/decoded --overwrite
	$(PY) -m gpu_vgm.compare $(DEMO)/input $(DEMO)/decoded
	$(PY) -m gpu_vgm.report --input $(DEMO)/encoded --output $(DEMO)/report

bench-kernels: $(STAMP)
	$(PY) benchmarks/kernels.py --rows 10000000

bench-pipeline: $(STAMP)
	$(PY) benchmarks/pipeline.py --rows 100000000

clean:
	rm -rf $(VENV) data
