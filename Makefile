# The two commands a learner needs are `make lab` and `make test`; the rest are for authors.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
LAB_ARGS ?=
NB ?=

.PHONY: install lab test notebooks bench benchmarks progress clean

install: $(STAMP)

# Re-run only when pyproject.toml changes (or the venv is gone).
$(STAMP): pyproject.toml tools/install_torch.py
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip setuptools wheel
	$(VPY) tools/install_torch.py
	$(VPY) -m pip install -e ".[dev]"
	@touch $(STAMP)

# Jupyter refuses to run as root unless told; root is the usual user inside containers.
ROOT_ARGS := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

# root_dir = the repository, so exercises/ is in the file browser next to notebooks/.
# Extra options for JupyterLab: make lab LAB_ARGS="--no-browser --port 8888"
lab: install
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/00-setup.ipynb $(ROOT_ARGS) $(LAB_ARGS)

test: install
	COURSE_QUICK=1 $(VPY) -m pytest

# Re-execute notebooks in full mode and store their outputs: `make notebooks NB=00-setup`.
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
	$(VPY) -m course_lib.grading

# Run every bench/ script and write BENCHMARKS.md (figures from this machine).
benchmarks: install
	$(VPY) tools/benchmarks_page.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache runs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
