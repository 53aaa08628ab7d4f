# The README's two commands: `make demo` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export DS_ACCELERATOR ?= cpu

.PHONY: env demo test benchmark clean
env: $(VENV)/.installed

$(VENV)/.installed: setup.cfg .ci/install
	VENV=$(VENV) bash .ci/install
	touch $@

demo: env
	$(PY) -m halotrans demo

test: env
	$(PY) -m pytest -q -ra

benchmark: env
	$(PY) -m halotrans.benchmark --quick

clean:
	rm -rf runs/demo
