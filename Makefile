# Two entry points (see README): `make run` and `make test`. Each creates the virtual
# environment on first use; the CPU torch pin lives in constraints-cpu.txt, not in pyproject.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev,ray,zoo,rliable,paper]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) train.py

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_ppo.py
	$(PY) benchmarks/bench_atari_envs.py

clean:
	rm -rf $(VENV) runs
