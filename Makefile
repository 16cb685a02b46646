# make test   the tests (creates .venv on first use)
# make bench  builds the default zoo if missing, evaluates solution.py on it, times detect()
# make zoo    only the zoo;  make real  the zoo and evaluation on the real data present
#             JOBS=N trains N models at once in worker processes sharing the cores (default 2)
# make defences  STRIP, pruning and GoodNet on the zoo's defence inputs
# make size   bytes of solution.py (the contest allows under 1 MB)
# make compat the contract tests under the grader's torch 2.4.0 / numpy 1.26.4
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ZOO ?= cache/zoo-default
PRESET ?= default
DETECTOR ?= solution
JOBS ?= 2

.PHONY: test bench zoo real defences size compat timing clean-cache

$(STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

zoo: $(STAMP)
	$(PY) -m bench.zoo --preset $(PRESET) --out $(ZOO) --jobs $(JOBS)

bench: zoo
	$(PY) -m bench.evaluate $(ZOO) --detector $(DETECTOR) --json cache/results/$(PRESET)-$(DETECTOR).json
	$(PY) -m bench.timing

real: $(STAMP)
	$(MAKE) bench PRESET=real ZOO=cache/zoo-real

defences: zoo
	$(PY) -m bench.defences $(ZOO) --json cache/results/$(PRESET)-defences.json

timing: $(STAMP)
	$(PY) -m bench.timing

size:
	@wc -c < solution.py | awk '{ printf "solution.py: %d bytes (limit 1,000,000)\n", $$1; exit ($$1 >= 1000000) }'

compat:
	$(PYTHON) -m venv .venv-compat
	.venv-compat/bin/python -m pip install -q --disable-pip-version-check torch==2.4.0 torchvision==0.19.0 numpy==1.26.4 pytest
	.venv-compat/bin/python -m pytest -q -p no:cacheprovider tests/test_contract.py tests/test_statistics.py tests/test_inputs.py tests/test_confirm.py

clean-cache:
	rm -rf cache
