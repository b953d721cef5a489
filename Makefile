# The two commands a fresh clone needs: `make demo` and `make test`. Both create .venv and
# install the project on first use (needs only python3 and make); re-runs skip the install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
# glibc's malloc tunables that the llmjax command sets for itself (llmjax/launch.py): tests
# and benchmarks run as the command does
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1:glibc.malloc.top_pad=67108864:glibc.malloc.mmap_max=0

.PHONY: demo test test-slow lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmjax train --config=configs/demo.py --workdir=runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadgroup

test-slow: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadgroup -m slow

benchmark: $(STAMP)
	$(PY) benchmarks/shakespeare_char.py

clean:
	rm -rf $(VENV) runs
