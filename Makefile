# dibigan-tf: every target makes the virtual environment it needs (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Faces (DATA_DIR given) train with the faces flagfile, the embedded digits with the digits one.
FLAGFILE ?= $(if $(DATA_DIR),experiments/flagfiles/faces_blackbox.flags,experiments/flagfiles/digits_blackbox.flags)
# Optional overrides passed to the training: make train-blackbox DATA_DIR=... MATCHER=... RUN=...
TRAIN_ARGS := $(if $(DATA_DIR),--data_dir=$(DATA_DIR)) $(if $(MATCHER),--matcher=$(MATCHER)) \
              $(if $(RUN),--run_name=$(RUN)) $(ARGS)
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most tests leave a core idle (subprocess start-up, imports).
TEST_WORKERS ?= 2

.PHONY: help venv evaluate train-blackbox train-student train-flow figure3 figure3-sweep ablation-digits test test-all bench tensorboard clean-venv

help:
	@echo "make train-blackbox   train DiBiGAN in blackbox mode (default: embedded MNIST digits)"
	@echo "make train-student    distil F^S from dlib on faces (DATA_DIR=<LFW-format root> needed)"
	@echo "make train-flow       train the bijection H alone (held-out bits/dim in <run>/flow/)"
	@echo "make figure3          the paper's Figure 3 for a finished run (second G without L_biject)"
	@echo "make figure3-sweep    Figure 3 per Eq. 4 reading and L_biject weight (ARGS=--readings=... --alphas=...) -> checkpoints/figure3-sweep.md"
	@echo "make ablation-digits  Table 2 (A)-(F) on digits, blackbox -> checkpoints/ablation-digits.md"
	@echo "make evaluate         verification (+ reconstruction attack with GENERATOR=<run>) on any pairs"
	@echo "                      MATCHER=dlib DATA_DIR=<root> PAIRS=<pairs.txt|.bin> OUT=<dir>"
	@echo "make test             run the test suite (the fast tests: what CI runs)"
	@echo "make test-all         run every test, including those marked slow"
	@echo "make bench            step throughput of H, F^S and G+D (table + checkpoints/bench.json)"
	@echo "make tensorboard      TensorBoard on checkpoints/"
	@echo "variables: FLAGFILE=$(FLAGFILE) DATA_DIR= MATCHER= RUN= ARGS='--flag=value ...'"

$(VENV)/.installed: setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

train-blackbox: venv
	$(PY) experiments/train.py --flagfile=$(FLAGFILE) $(TRAIN_ARGS)

train-student: venv
	@test -n "$(DATA_DIR)" || { echo "make train-student needs DATA_DIR=<root>/<identity>/<image> (e.g. an LFW folder)"; exit 2; }
	$(PY) experiments/train.py --flagfile=experiments/flagfiles/lfw_student_dlib.flags $(TRAIN_ARGS)

train-flow: venv
	$(PY) experiments/train.py --flagfile=experiments/flagfiles/digits_flow.flags $(TRAIN_ARGS)

figure3: venv
	$(PY) experiments/train.py --flagfile=$(FLAGFILE) --stage=figure3 $(TRAIN_ARGS)

figure3-sweep: venv
	$(PY) experiments/figure3_sweep.py $(ARGS)

ablation-digits: venv
	$(PY) experiments/ablation.py $(if $(ARGS),--extra="$(ARGS)")

EVAL_ARGS := --matcher=$(or $(MATCHER),dlib) $(if $(DATA_DIR),--data_dir=$(DATA_DIR)) \
             --pairs=$(PAIRS) --output_dir=$(or $(OUT),checkpoints/evaluate) \
             $(if $(GENERATOR),--generator=$(GENERATOR)) $(ARGS)

evaluate: venv
	@test -n "$(PAIRS)" || { echo "make evaluate needs PAIRS=<LFW pairs file or insightface .bin> (and DATA_DIR=<image root> for a pairs file)"; exit 2; }
	$(PY) experiments/evaluate.py $(EVAL_ARGS)

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" --durations=15 $(PYTEST_ARGS) tests

test-all: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS) tests

bench: venv
	$(PY) experiments/bench.py --out=checkpoints/bench.json $(ARGS)

tensorboard: venv
	$(VENV)/bin/tensorboard --logdir checkpoints

clean-venv:
	rm -rf $(VENV)
