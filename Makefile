# Two entry points: `make repro` runs the default pipeline, `make test` runs the tests.
# Both create .venv on first use. torch is pinned to 2.13.0: on the project's dev machines
# pip takes a CPU build from local disk; elsewhere pip takes the normal build.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
TORCH := torch==2.13.0

.PHONY: repro test setup lint clean-venv

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[offline,dev,scale]"
	touch $(VENV_STAMP)

repro: $(VENV_STAMP)
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/dvc repro

# Two workers (one per core, one thread each); a test module stays on one worker, so its
# module fixtures are built once (the paper-profile run is one module of ~4 minutes).
test: $(VENV_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

lint: $(VENV_STAMP)
	.venv/bin/ruff check pipeline stages tests benchmarks

clean-venv:
	rm -rf .venv
