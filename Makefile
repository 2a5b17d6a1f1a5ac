# The two commands a learner needs are `make lab` and `make test`; the rest are for authors.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
TEST_STAMP := $(VENV)/.install-test-stamp
PIP := $(VPY) -m pip install -q --disable-pip-version-check
LAB_ARGS ?=
NB ?=

.PHONY: install install-test lab refresh-notebooks test unit lint nbval notebooks bench benchmarks gpu-check progress clean

install: $(STAMP)

# What the lessons need. Re-run only when pyproject.toml changes (or the venv is gone).
$(STAMP): pyproject.toml tools/install_torch.py
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@$(PIP) --upgrade pip setuptools wheel
	@$(VPY) tools/install_torch.py
	@PYTHONWARNINGS="ignore:Editable installation" $(PIP) -e .
	@touch $(STAMP)
	@echo "[install] 完成：课程依赖已装进 $(VENV)（$$($(VPY) -c 'import torch; print("torch", torch.__version__)')）。下一步：make lab"

# Test-only packages (the [test] extra: HF parity, browser tests, timeouts), only for `make test`.
install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	@PYTHONWARNINGS="ignore:Editable installation" $(PIP) -e ".[test]"
	@touch $(TEST_STAMP)
	@echo "[install] 测试用的额外依赖 (.[test]) 已安装"

# Jupyter refuses to run as root unless told; root is the usual user inside containers.
ROOT_ARGS := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

# The learner works in my-notebooks/ (git-ignored copies made on first use; the stored notebooks
# in notebooks/ are never overwritten). root_dir = the repository, so exercises/ is in the file
# browser too. JupyterLab's printed URL opens the copy of 00-setup, also with --no-browser.
# Extra options for JupyterLab: make lab LAB_ARGS="--no-browser --port 8888"
LAB_START := $(shell $(PY) tools/lab.py url 2>/dev/null || echo /lab)
lab: install
	@$(VPY) tools/lab.py prepare
	@$(VPY) tools/lab.py banner $(LAB_ARGS)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url="$(LAB_START)" \
	  --ServerApp.default_url="$(LAB_START)" $(ROOT_ARGS) $(LAB_ARGS)

# Bring in notebooks the course added or changed; your changed copies are kept as <name>.bak.ipynb.
refresh-notebooks: install
	@$(VPY) tools/lab.py refresh

# The whole suite (what CI runs, 11-13 min of pytest on an idle 2-core machine): unit tests, graders, reliability, browser,
# and every lesson run once by nbval the way a learner runs it (tests/test_learner_workspace.py:
# the lab's copy of each notebook, every exercise solved), in one pytest with 2 xdist workers
# (conftest.py keeps each file on one worker, in order; longest first). One torch thread per
# process: two workers on two cores, each with torch's default of one thread per core, oversubscribe
# the machine (the lessons' setup cells follow COURSE_THREADS too).
# TEST_JOBS=0 runs everything in one process; TEST_ARGS="--lf" reruns what failed last time.
TEST_JOBS ?= 2
TEST_ARGS ?=
TEST_ENV := COURSE_QUICK=1 COURSE_THREADS=1 OMP_NUM_THREADS=1
test: install-test
	$(TEST_ENV) $(VPY) -m pytest -n $(TEST_JOBS) --dist loadgroup -p no:nbval tests $(TEST_ARGS)

# nbval on the stored notebooks exactly as they are here (with your exercises as they are): make nbval NB=4.0.1
nbval: install-test
	$(TEST_ENV) $(VPY) -m pytest notebooks/$(if $(NB),$(NB)*.ipynb,) -p no:xdist --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=900 $(TEST_ARGS)

# The core library's fast unit tests (under a minute on 2 cores): the quick loop while changing
# course_lib. Left out: files that train, spawn processes, compile or start a server, and the
# course-side (lab) ones; `make test` runs them all. A new tests/unit file is in unless named here.
UNIT_SLOW := accumulation activation_checkpointing amp batched_generation compiled_decode dataloading \
             engine export fsdp fsdp_memory hf_export memory quant_kernels quantize runner serve train \
             demo measure quiz
unit: install-test
	$(TEST_ENV) $(VPY) -m pytest tests/unit $(foreach f,$(UNIT_SLOW),--ignore=tests/unit/test_$(f).py) \
	  -q -x -n $(TEST_JOBS) --dist loadgroup $(TEST_ARGS)

# Format and lint (ruff, configured in pyproject.toml); `make test` checks both.
lint: install-test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Re-execute notebooks in full mode and store their outputs: `make notebooks NB=00-setup`.
# Records each notebook's run time in notebooks/timings.json and updates the README's time table.
notebooks: install
	$(VPY) tools/build_notebooks.py $(NB)

# Every bench script prints ratios against a baseline measured in the same run.
bench: install
	@set -e; for f in bench/*.py; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; $(VPY) "$$f"; \
	done

# Your exercise progress: which pass, which fail and why, which are untouched.
progress: install
	$(VPY) -m course_lib.lab.grading

# Run every bench/ script and write BENCHMARKS.md (figures from this machine).
benchmarks: install
	$(VPY) tools/benchmarks_page.py

# On a CUDA machine (<= 8 min): train/AMP/resume/memory/nccl/decode/quantization/engine/notebooks
# checks, one line each, and the GPU section of BENCHMARKS.md. `--dry-run` runs the CPU half.
gpu-check: install-test
	$(VPY) bench/gpu_check.py --require-cuda

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache runs   # my-notebooks/ (your work) is kept
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
