# CytologIA kit -- every command a user types. `make` (or `make help`) lists them.
# Each recipe is one line over `python -m ...`; settings are variables with defaults.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_BASE ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?= data/raw#          challenge data folder: train.csv, test.csv, images/
DEMO ?= data/demo#         synthetic demo data folder
K ?=#                       folds for make folds (default 5); later steps read it from the prepared dataset
SEED ?=#                    fold seed for make folds (default 42); later steps read it from the prepared dataset
MODEL ?= yolov8#           registry name (see `python -m train --list`)
FOLD ?= 0#                 fold index, or `all`
JOBS ?=#                    training jobs at once for make all / make train FOLD=all / make demo
RECIPE ?= configs/recipe.yaml#  the recipe of make all
IMAGES ?= 1200#            synthetic images for demo-data (as configs/demo.yaml synth.images)
ENSEMBLE ?= configs/ensemble.yaml
DETECTOR ?= yolov8#       detector whose OOF boxes the classifier report uses (or gt)
SET ?= default#            pretrained files for make weights: default, all, or file names (see --list)
PYTEST_ARGS ?=

# Optional settings, passed on only when set.
opt = $(if $($(1)),$(2) $($(1)))
DS_OPTS = $(call opt,K,--k) $(call opt,SEED,--seed)
DS_KEYS = $(if $(K),k=$(K)) $(if $(SEED),seed=$(SEED))
FOLD_OPTS = $(call opt,BALANCE,--balance) $(if $(REPAIR),--repair) $(if $(FORCE),--force) $(call opt,RESIZE,--resize)
TRAIN_ARGS = $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(IMGSZ),imgsz=$(IMGSZ)) $(if $(BATCH),batch=$(BATCH)) \
	$(if $(DEVICE),device=$(DEVICE)) $(if $(WEIGHTS),pretrained=$(WEIGHTS)) $(if $(RESUME),--resume) $(if $(FORCE),--force) $(ARGS)

.PHONY: help setup lint test-unit test test-all bench export gpu-check demo-data demo all bccd weights folds masks train infer submission score tune-ensemble cls-report report rehearsal validate clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: DATA=$(DATA) K=$(or $(K),5) SEED=$(or $(SEED),42) (make folds; later steps: as prepared) MODEL=$(MODEL) FOLD=$(FOLD) JOBS=$(or $(JOBS),<recipe>) RECIPE=$(RECIPE) (see README)"

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --no-cache-dir -q --upgrade pip
	$(PY) -m pip install --no-cache-dir -q -r requirements.txt
	touch $@

setup: $(STAMP) ## create .venv and install the pinned requirements

lint: $(STAMP) ## check the code with the pinned ruff (rules in pyproject.toml)
	$(PY) -m ruff check .

test-unit: $(STAMP) ## run the unit tests alone (pure functions, well under 30 s)
	$(PY) -m pytest -m "unit and not smoke and not slow" $(PYTEST_ARGS)

test: $(STAMP) ## run the fast test tier (what CI runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## run every test, slow ones included (GPU tests skip without a GPU)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## speed benchmarks on the real annotation files, printed side by side
	$(PY) -m bench

export: $(STAMP) ## ONNX + OpenVINO copies of ENSEMBLE's YOLO members and classifiers, checked against torch, timed
	$(PY) -m infer.export --config $(ENSEMBLE) --data $(DATA) --images $(DATA)/images $(DS_KEYS)

gpu-check: $(STAMP) ## on a CUDA machine: AMP steps, DDP, latency, throughput, TensorRT, MedSAM (<= 8 min; reduced on CPU)
	$(PY) -m bench.gpu_check

demo-data: $(STAMP) ## generate the synthetic smear data set in DEMO (data/demo)
	$(PY) -m prepare.synth --out $(DEMO) --images $(IMAGES) --seed $(or $(SEED),42)

weights: $(STAMP) ## download pretrained weights into weights/ (SET=default|all|names; the only target that uses the network)
	$(PY) -m train.weights --set $(SET) $(call opt,MIRROR,--mirror)

folds: $(STAMP) ## clean, group duplicates, make K stratified folds and the YOLO/COCO exports of DATA
	$(PY) -m prepare.folds --data $(DATA) $(DS_OPTS) $(FOLD_OPTS)

masks: $(STAMP) ## masks from boxes for the UNet (MedSAM when MEDSAM_CKPT=path|auto, else a classical fallback)
	$(PY) -m train.unet.masks --data $(DATA) $(DS_OPTS) $(call opt,MEDSAM_CKPT,--medsam-ckpt)

all: $(STAMP) ## the whole RECIPE on DATA: folds, every member x fold (JOBS= at once), infer, tune, submission, report
	$(PY) -m pipeline --recipe $(RECIPE) --data $(DATA) $(call opt,JOBS,--jobs) $(DS_KEYS) $(ARGS)

train: $(STAMP) ## train MODEL on FOLD (JOBS= EPOCHS= IMGSZ= BATCH= DEVICE= WEIGHTS=auto|none|path RESUME=1 FORCE=1 ARGS="k=v")
	$(PY) -m train --model $(MODEL) --fold $(FOLD) --data $(DATA) $(DS_OPTS) $(call opt,JOBS,--jobs) $(TRAIN_ARGS)

infer: $(STAMP) ## predict test and out-of-fold images with every member of ENSEMBLE (with TTA)
	$(PY) -m infer --config $(ENSEMBLE) --data $(DATA) $(DS_KEYS)

tune-ensemble: $(STAMP) ## search member weights and WBF settings on out-of-fold predictions
	$(PY) -m infer.tune --config $(ENSEMBLE) --data $(DATA) $(DS_KEYS)

submission: $(STAMP) ## infer + fuse + write + validate the submission CSV in submissions/
	$(PY) -m infer --config $(ENSEMBLE) --data $(DATA) --submission $(DS_KEYS)

cls-report: $(STAMP) ## crop classifier vs detector classes on out-of-fold boxes (DETECTOR=yolov8|gt)
	$(PY) -m infer.cls_report --data $(DATA) $(DS_OPTS) --detector $(DETECTOR)

report: $(STAMP) ## one self-contained HTML page: data, folds, curves, OOF table with bootstrap intervals, errors
	$(PY) -m pipeline.report --data $(DATA) $(DS_OPTS)

validate: $(STAMP) ## validate SUB= against DATA's test.csv
	$(PY) -m submit.validate --submission $(SUB) --test $(DATA)/test.csv --images $(DATA)/images

score: $(STAMP) ## score SUB= against TRUTH=, or the out-of-fold predictions when neither is given
	$(if $(SUB),$(PY) -m submit.score --truth $(TRUTH) --submission $(SUB),$(PY) -m submit.oof --data $(DATA) $(DS_OPTS))

bccd: $(STAMP) ## make all on the real BCCD smears (../shared/data/bccd, upstream split) from scratch on a CPU
	$(PY) -m bench.bccd.data --all $(call opt,JOBS,--jobs) $(ARGS)

demo: $(STAMP) ## make all on synthetic data (configs/demo.yaml), from nothing, on a CPU, + the test score
	$(PY) -m pipeline.demo --data $(DEMO) $(call opt,JOBS,--jobs) $(ARGS)

rehearsal: $(STAMP) ## make all at real scale on placeholder images of the real names: time + peak RSS per step (IMAGES=N: a subset)
	$(PY) -m prepare.rehearsal $(if $(filter command line environment,$(origin IMAGES)),--images $(IMAGES)) $(call opt,JOBS,--jobs) $(ARGS)

clean: ## remove generated outputs (work/, submissions/); keeps .venv and data/
	rm -rf work submissions
