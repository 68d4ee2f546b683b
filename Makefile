# Two commands for a fresh machine: `make demo` and `make test`.
# Override the torch requirement, e.g. `make test TORCH=torch==2.14.1`.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
# k-diffusion is installed without its declared requirements (they pull torchvision and another
# torch); its samplers need only the [k-diffusion] extra.
K_DIFFUSION ?= k-diffusion==0.1.1.post1
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	# the torch requirement again, so that no extra's resolution replaces it
	$(BIN)/python -m pip install -e ".[test,plot,diffusers,k-diffusion]" "$(TORCH)"
	$(BIN)/python -m pip install --no-deps "$(K_DIFFUSION)"
	$(BIN)/python -c "import torch, diffusers; print('torch', torch.__version__, '| diffusers', diffusers.__version__)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sdediff demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/sdediff bench steps

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
