# Two commands on a fresh machine: `make run` and `make test`. Each builds or refreshes
# .venv first (torch==2.13.0 first, then the project under constraints.txt).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PY     ?= 3.12

.PHONY: venv run test test-all bench wheelhouse gpu-kit clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m crossq_gpu.learner $(ARGS)

# CI tier: lint, then the numerical tests plus the short learning tests; `-m slow` runs the long ones.
test: $(STAMP)
	$(BIN)/ruff check .
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.brn_kernel
	$(BIN)/python -m benchmarks.update_throughput

# Wheels for an air-gapped GPU node running Python $(PY): everything the project needs
# except torch, jax/jaxlib (with its CUDA plugin) and triton, which such nodes ship (the jax
# that brax pulls in is downloaded unpinned, only to satisfy the resolver). Install there with
#   pip install --no-index --find-links wheelhouse -e '.[brax]'
wheelhouse:
	mkdir -p wheelhouse
	$(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	deps = p['dependencies'] + p['optional-dependencies']['brax'] + p['optional-dependencies']['video'] + p['optional-dependencies']['test'][1:]; \
	open('wheelhouse/requirements.txt', 'w').write('\n'.join(d for d in deps if not d.startswith(('torch', 'triton', 'jax', 'crossq'))) + '\nsetuptools>=68\nwheel\n')"
	grep -v '^torch\|^triton\|^jax' constraints.txt > wheelhouse/constraints.txt
	$(PYTHON) -m pip download -d wheelhouse --only-binary=:all: --python-version $(PY) \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -c wheelhouse/constraints.txt -r wheelhouse/requirements.txt

# The few wheels a lent GPU machine's image lacks (it ships torch, triton, jax, flax, optax,
# numpy, …; see benchmarks/gpu_check.sh), for Python $(PY), about 36 MB: carry gpu_kit/ there.
# pytest and pytest-timeout come too, so the CUDA tests and their per-test limit run whatever
# the image has.
GPU_KIT := brax Farama-Notifications Flask flask-cors blinker itsdangerous glfw gymnasium jaxopt \
           mujoco mujoco-core mujoco-mjx mujoco-studio PyOpenGL tensorboardX trimesh \
           pytest pytest-timeout pluggy iniconfig Pygments
gpu-kit:
	mkdir -p gpu_kit
	for p in $(GPU_KIT); do grep -i "^$$p==" constraints.txt; done > gpu_kit/requirements.txt
	$(PYTHON) -m pip download -q -d gpu_kit --no-deps --only-binary=:all: --python-version $(PY) \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -r gpu_kit/requirements.txt

clean:
	rm -rf $(VENV) *.egg-info
