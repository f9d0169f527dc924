# Two commands: `make demo` (install, train the default model, sample) and `make test`.
# PyTorch comes first, the build that fits the machine (scripts/install_torch.py: the CPU build without
# an NVIDIA GPU; TORCH_INDEX=URL overrides; a torch already in .venv is kept).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install dev clean

demo: $(VENV)/.installed
	$(BIN)/slm train

# one pytest worker a core, at most four (pytest-xdist); each test runs torch on one thread (tests/conftest.py)
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n auto --maxprocesses=4

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python scripts/install_torch.py
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info
