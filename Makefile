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
NAME ?=#                    make train: the member's name, its run folder (a recipe's name:); default MODEL
FOLD ?= 0#                 fold index, or `all`
JOBS ?=#                    training jobs at once for make all / make train FOLD=all / make demo
RECIPE ?= configs/recipe.yaml#  the recipe of make all
IMAGES ?= 1200#            synthetic images for demo-data (as configs/demo.yaml synth.images)
ENSEMBLE ?=#               ensemble config; default: the last make all's tuned one on DATA (cytocore.lastrun)
DETECTOR ?=#               detector whose OOF boxes the classifier report uses (or gt); default: the ensemble's first
SET ?=#                     pretrained files for make weights: empty = RECIPE's, default, all, or names (--list)
LAUNCHER ?=#               make all's training jobs: local (default, JOBS= at once), slurm (submitit), submitit-local
#   with LAUNCHER=slurm, each job's PARTITION=, TIME= (minutes or H:MM:SS), MEM= (GB), GPUS= (1), CPUS= (8), ACCOUNT=
PYTEST_ARGS ?=

# TRACKER=none|csv|tensorboard|mlflow: experiment tracking of the training jobs and the OOF table
ifdef TRACKER
export CYTOKIT_TRACKER := $(TRACKER)
endif
# VERBOSE=1: ultralytics' own per-batch bars and validation tables in each training job's log
ifdef VERBOSE
export CYTOKIT_VERBOSE := $(VERBOSE)
endif

# Optional settings, passed on only when set; q quotes a value for the shell (spaces, non-ASCII, quotes).
q = '$(subst ','\'',$(1))'

opt = $(if $($(1)),$(2) $($(1)))
qopt = $(if $($(1)),$(2) $(call q,$($(1))))#  a path: quoted
DS_OPTS = $(call opt,K,--k) $(call opt,SEED,--seed)
DS_KEYS = $(if $(K),k=$(K)) $(if $(SEED),seed=$(SEED))
DATA_Q = $(call q,$(DATA))
RUN_ARGS = $(if $(DEVICE),device=$(call q,$(DEVICE))) $(ARGS)#  key=value settings of every command (ARGS: split at spaces)
FOLD_OPTS = $(call opt,BALANCE,--balance) $(if $(REPAIR),--repair) $(if $(FORCE),--force) $(call opt,RESIZE,--resize)
TRAIN_FLAGS = $(if $(RESUME),--resume) $(if $(FORCE),--force)
CLUSTER_ENV = $(if $(LAUNCHER),CYTOKIT_LAUNCHER=$(LAUNCHER) $(foreach v,PARTITION TIME MEM GPUS CPUS ACCOUNT,$(if $($(v)),CYTOKIT_CLUSTER_$(v)=$($(v)))))
TRAIN_ARGS = $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(IMGSZ),imgsz=$(IMGSZ)) $(if $(BATCH),batch=$(BATCH)) \
	$(if $(WEIGHTS),pretrained=$(WEIGHTS)) $(RUN_ARGS)
MEMBER_ARGS = $(foreach kv,$(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(BATCH),batch=$(BATCH)) $(if $(DEVICE),device=$(DEVICE)),--member $(kv)) \
	$(if $(WEIGHTS),--member pretrained=$(WEIGHTS)) $(if $(IMGSZ),--detector imgsz=$(IMGSZ))
ENS_OPT = $(call qopt,ENSEMBLE,--config)
RECIPE_OPT = $(if $(filter command line,$(origin RECIPE)),--recipe $(call q,$(RECIPE)))#  make train: default the run's
# The names of the variables given on the command line: cytocore.makevars refuses those the goals would drop
# (lower case, `make train imgsz=640`: "use IMGSZ=640") and Python messages name make variables (FORCE=1).
export CYTOKIT_MAKEVARS := $(strip $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
CHECK = @$(PY) -m cytocore.makevars $(or $(MAKECMDGOALS),$@)
CLEAN_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON_BASE))#  make clean works without .venv

# After `make demo` on a clone without data/raw: the later commands use the demo's run (its data and work folder).
LATER := submission infer tune-ensemble report score cls-report validate export
ifeq ($(origin DATA)$(origin CYTOKIT_WORK)$(wildcard data/raw/train.csv),fileundefined)
ifneq ($(filter $(LATER),$(MAKECMDGOALS)),)
ifneq ($(wildcard work/demo/logs/*/report.json),)
DATA := $(DEMO)
export CYTOKIT_WORK := $(CURDIR)/work/demo
$(info data/raw has no train.csv: using make demo's run (DATA=$(DEMO) CYTOKIT_WORK=work/demo); DATA= chooses another)
endif
endif
endif

.PHONY: help setup lint test-unit test test-all bench export gpu-check demo-data demo all bccd weights folds masks train infer submission score tune-ensemble cls-report report rehearsal levers validate predict clean clean-runs

# make help lists the targets in the order of the work: start, the real data, using a run, checks, housekeeping
HELP_ORDER := demo setup demo-data weights folds all train masks tune-ensemble infer submission validate score \
	report cls-report predict export rehearsal levers gpu-check bccd test test-unit test-all lint bench clean clean-runs

help: ## list the targets
	@awk -v order="$(HELP_ORDER)" 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{text[$$1]=$$2; seen[++n]=$$1} \
	END{k=split(order, o, " "); for (i=1; i<=k; i++) if (o[i] in text) {printf "  make %-15s %s\n", o[i], text[o[i]]; done[o[i]]=1} \
	for (i=1; i<=n; i++) if (!(seen[i] in done) && seen[i] != "help") printf "  make %-15s %s\n", seen[i], text[seen[i]]}' $(MAKEFILE_LIST)
	@echo "  Variables: DATA=$(DATA) K=$(or $(K),5) SEED=$(or $(SEED),42) (make folds; later steps: as prepared)"
	@echo "  MODEL=$(MODEL) NAME=$(or $(NAME),<MODEL>) FOLD=$(FOLD) JOBS=$(or $(JOBS),<recipe>) RECIPE=$(RECIPE) ENSEMBLE=$(or $(ENSEMBLE),<the last run's tuned one>)"
	@echo "  DEVICE= ARGS=\"key=value ...\" on every command; make all EPOCHS= BATCH= DEVICE= WEIGHTS= set every member,"
	@echo "  IMGSZ= every detector; upper case only (make train IMGSZ=640); see README"

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
	$(CHECK)
	$(PY) -m infer.export --config $(call q,$(or $(ENSEMBLE),$(shell $(PY) -m cytocore.lastrun $(DATA_Q) $(DS_KEYS)))) --data $(DATA_Q) --images $(call q,$(DATA)/images) $(DS_KEYS) $(RUN_ARGS)

gpu-check: $(STAMP) ## on a GPU box first: /dev/shm, AMP, RECIPE's trainers, DDP, latency, TensorRT (<= 8 min)
	$(CHECK)
	$(PY) -m bench.gpu_check --recipe $(call q,$(RECIPE)) $(call opt,DEVICE,--device)

demo-data: $(STAMP) ## generate the synthetic smear data set in DEMO (data/demo)
	$(CHECK)
	$(PY) -m prepare.synth --out $(call q,$(DEMO)) --images $(IMAGES) --seed $(or $(SEED),42)

weights: $(STAMP) ## fetch the pretrained files RECIPE starts from (SET=all|names; the one networked target)
	$(CHECK)
	$(PY) -m $(if $(SET),train.weights --set $(SET),pipeline.weights --recipe $(call q,$(RECIPE))) $(call opt,MIRROR,--mirror)

folds: $(STAMP) ## clean, group duplicates, make K stratified folds and the YOLO/COCO exports of DATA
	$(CHECK)
	$(PY) -m prepare.folds --data $(DATA_Q) $(DS_OPTS) $(FOLD_OPTS) $(ARGS)

masks: $(STAMP) ## masks from boxes for the UNet (MedSAM when MEDSAM_CKPT=path|auto, else a classical fallback)
	$(CHECK)
	$(PY) -m train.unet.masks --data $(DATA_Q) $(DS_OPTS) $(call qopt,MEDSAM_CKPT,--medsam-ckpt) $(if $(FORCE),--force) $(RUN_ARGS)

all: $(STAMP) ## the whole RECIPE on DATA: folds, training (JOBS= or LAUNCHER=slurm), tuning, submission, report
	$(CHECK)
	$(CLUSTER_ENV) $(PY) -m pipeline --recipe $(call q,$(RECIPE)) --data $(DATA_Q) $(call opt,JOBS,--jobs) $(MEMBER_ARGS) $(DS_KEYS) $(ARGS)

train: $(STAMP) ## train MODEL (as member NAME=) on FOLD (or all) with the last run's settings; EPOCHS= IMGSZ= RESUME=1 FORCE=1
	$(CHECK)
	$(PY) -m train --model $(MODEL) $(call opt,NAME,--name) --fold $(FOLD) --data $(DATA_Q) $(DS_OPTS) $(call opt,JOBS,--jobs) $(RECIPE_OPT) $(TRAIN_FLAGS) $(TRAIN_ARGS)

infer: $(STAMP) ## predict test and out-of-fold images with every member of ENSEMBLE (with TTA)
	$(CHECK)
	$(PY) -m infer $(ENS_OPT) --data $(DATA_Q) $(if $(FORCE),--force) $(DS_KEYS) $(RUN_ARGS)

tune-ensemble: $(STAMP) ## search member weights and WBF settings on out-of-fold predictions
	$(CHECK)
	$(PY) -m infer.tune $(ENS_OPT) --data $(DATA_Q) $(DS_KEYS) $(RUN_ARGS)

submission: $(STAMP) ## infer + fuse + write + validate the submission CSV in submissions/
	$(CHECK)
	$(PY) -m submit $(ENS_OPT) --data $(DATA_Q) $(if $(FORCE),--force) $(DS_KEYS) $(RUN_ARGS)

cls-report: $(STAMP) ## crop classifier vs detector classes on out-of-fold boxes (DETECTOR=yolov8|gt)
	$(CHECK)
	$(PY) -m infer.cls_report $(ENS_OPT) --data $(DATA_Q) $(DS_OPTS) $(call opt,DETECTOR,--detector) $(RUN_ARGS)

report: $(STAMP) ## one self-contained HTML page: data, folds, curves, OOF table with bootstrap intervals, errors
	$(CHECK)
	$(PY) -m pipeline.report $(ENS_OPT) --data $(DATA_Q) $(DS_OPTS) $(RUN_ARGS)

validate: $(STAMP) ## validate SUB= against DATA's test.csv
	$(CHECK)
	$(PY) -m submit.validate --submission $(call q,$(SUB)) --test $(call q,$(DATA)/test.csv) --images $(call q,$(DATA)/images)

score: $(STAMP) ## score SUB= against TRUTH=, or the out-of-fold predictions when neither is given
	$(CHECK)
	$(if $(SUB),$(PY) -m submit.score $(call qopt,TRUTH,--truth) --submission $(call q,$(SUB)) $(RUN_ARGS),$(PY) -m submit.oof --data $(DATA_Q) $(DS_OPTS) $(RUN_ARGS))

bccd: $(STAMP) ## make all on the real BCCD smears (../shared/data/bccd, upstream split) from scratch on a CPU
	$(CHECK)
	$(PY) -m pipeline.bccd $(call opt,JOBS,--jobs) $(ARGS)

demo: $(STAMP) ## make all on synthetic data (configs/demo.yaml), from nothing, on a CPU, + the test score
	$(CHECK)
	$(PY) -m pipeline.demo --data $(call q,$(DEMO)) $(call opt,JOBS,--jobs) $(ARGS)

rehearsal: $(STAMP) ## make all at full scale on placeholder images: each step's time and peak RSS (IMAGES=N)
	$(CHECK)
	$(PY) -m pipeline.rehearsal $(if $(filter command line environment,$(origin IMAGES)),--images $(IMAGES)) $(call opt,JOBS,--jobs) $(ARGS)

levers: $(STAMP) ## a lever on several training seeds, arm by arm side by side (STUDY=configs/levers/cleaning.yaml)
	$(CHECK)
	$(PY) -m pipeline.levers --study $(call q,$(or $(STUDY),configs/levers/cleaning.yaml)) $(ARGS)

predict: $(STAMP) ## the run's ensemble on IMAGES=<folder or glob> (RUN= OUT= DEVICE= CONF=): CSV, JSON, drawings
	$(if $(filter default file,$(origin IMAGES)),$(error give the images: make predict IMAGES=<folder or 'glob'>))
	$(CHECK)
	$(PY) -m infer.predict_images --images $(call q,$(IMAGES)) $(call opt,RUN,--run) $(call qopt,OUT,--out) \
		$(call opt,DEVICE,--device) $(call opt,CONF,--conf)

clean: ## remove caches and temporary files only; trained runs, predictions and submissions are kept
	@$(CLEAN_PY) -m cytocore.makevars $(or $(MAKECMDGOALS),$@)
	@$(CLEAN_PY) -m cytocore.cleanup caches

clean-runs: ## list every generated output (runs, predictions, submissions, logs); deletes them with CONFIRM=1
	@$(CLEAN_PY) -m cytocore.makevars $(or $(MAKECMDGOALS),$@)
	@$(CLEAN_PY) -m cytocore.cleanup runs $(if $(CONFIRM),--confirm)
