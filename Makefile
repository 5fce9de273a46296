# `make repro` and `make test` each create .venv when it is missing (or when pyproject.toml changed).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The suite runs in this many pytest-xdist processes, one test file each at a time (module fixtures are built once),
# in collection order (tests/conftest.py puts the slow ones first): 8-11 min on 2 cores where one process took 13
# (2026-12-07, README "Tests and benchmarks"); TEST_WORKERS=0 runs the suite in pytest's own process.
TEST_WORKERS ?= 2
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test lint ui venv clean-venv real real-camera real-gpu

# The real-data recipes (README "The real Galaxy Zoo images"; tests/test_readme.py keeps the README's copy in sync).
# REAL_CPU is the best measured on 2 CPU cores (ResNet-18 trained from scratch, 192-px crop, 64 px, 35 epochs with the
# cached loader and draft decoding, galaxies shown at 0.7-1.4x their size (augment.scale, since 2026-12-05), 21-39 min of
# training measured, by the machine's speed on the day (BENCHMARKS.md "training minutes"); benchmarks/recipes.csv has every measured run). Its lr,
# weight decay, head and label smoothing are the values that run used: the Optuna study's best on the synthetic set
# as of 2026-12-02 (reports/best_params.yaml at 88d1e81; a later rerun of that study ranked another trial first),
# not tuned on the real data (that study: README "Real-data tuning"). The
# GZ2 rows' debiased t01 vote fractions ride along for evaluate's by-confidence KPIs (labels come from `label`).
REAL_CPU := -S data.source=manifest -S train.mode=finetune -S model.arch=resnet18 -S preprocess.crop=192 \
  -S train.epochs=35 -S train.batch_size=64 -S train.lr=0.0007447144904083078 -S train.weight_decay=1.2697111322756417e-06 \
  -S model.hidden=256 -S model.dropout=0.16516741050193706 -S train.label_smoothing=0.030697295105676373 \
  -S train.layer_decay=1.0 -S train.early_stopping_patience=0 -S tune.n_trials=0 -S evaluate.stability=false \
  -S train.loader=cache -S preprocess.decode=draft -S 'augment.scale=[0.7,1.4]' \
  -S evaluate.ood_manifest=../shared/ood-dev/labels.csv \
  -S 'data.manifest.vote_columns={spiral: gz2_t01_smooth_or_features_a02_features_or_disk_debiased, elliptical: gz2_t01_smooth_or_features_a01_smooth_debiased}'
# REAL_GPU: for a machine with a CUDA GPU. ResNet-50 at 128 px, tuned (12 trials), bf16, 40 epochs; the repeated
# splits' stability refits stay on. Its training without the tuning trials was measured once on an H200 (test 0.904,
# level with REAL_CPU: BENCHMARKS.md "the same training on a GPU"); the tuned recipe as a whole has not been run.
REAL_GPU := -S data.source=manifest -S train.mode=finetune -S model.arch=resnet50 -S preprocess.crop=192 \
  -S preprocess.image_size=128 -S train.epochs=40 -S train.batch_size=128 -S train.lr=0.001 \
  -S train.weight_decay=0.05 -S train.layer_decay=1.0 -S train.label_smoothing=0.05 \
  -S train.early_stopping_patience=0 -S train.num_workers=8 -S embed.num_workers=8 -S evaluate.num_workers=8 \
  -S tune.n_trials=12 -S tune.epochs=10 -S train.device=cuda -S evaluate.ood_manifest=../shared/ood-dev/labels.csv \
  -S 'data.manifest.vote_columns={spiral: gz2_t01_smooth_or_features_a02_features_or_disk_debiased, elliptical: gz2_t01_smooth_or_features_a01_smooth_debiased}'

venv: $(VENV)/.installed .dvc/plots-offline.html

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins the exact torch builds that pip takes from local disk on these machines
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# the page of `dvc plots show/diff` with Vega inline: DVC's own loads it from a CDN and is blank offline
.dvc/plots-offline.html: $(VENV)/.installed
	$(BIN)/galmorph plots-template

repro: venv
	$(BIN)/dvc repro

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

ui: venv
	$(BIN)/galmorph ui

# EXTRA: more -S flags on top of a real-data recipe, NAME: the DVC experiment's name (README "train.outliers")
EXTRA ?=

real: venv    ## the best measured CPU recipe on ../shared/galaxyzoo, as the DVC experiment real-cpu (or NAME)
	$(BIN)/dvc exp run -n $(or $(NAME),real-cpu) $(REAL_CPU) $(EXTRA)

# REAL_CAMERA: REAL_CPU with the survey augmentation's photometric effects (sky level and colour, colour balance,
# stretch, saturated cores, one band) on 80% of the training images and its resolution effects (stars, blur, coarse
# pixels, noise) off, for pictures whose sky, colour and stretch differ from SDSS's. Three seeds: 0.3-1.0 point of SDSS
# accuracy, DECaLS -0.6 to -2.6 (no interval excludes zero), another camera's look costs it 0-2.3 points against 1-10
# for REAL_CPU's model. It replaced sky normalisation (preprocess.sky: border), which costs DECaLS' ellipticals (README "Which
# images to trust it on", BENCHMARKS.md "Another camera's look").
REAL_CAMERA := $(REAL_CPU) -S augment.survey.p=0.8 -S augment.survey.stars_p=0 -S augment.survey.blur_p=0 \
	-S augment.survey.pixel_p=0 -S augment.survey.noise_p=0

real-camera: venv    ## the CPU recipe trained on other cameras' looks, for their pictures, as the DVC experiment real-camera (or NAME)
	$(BIN)/dvc exp run -n $(or $(NAME),real-camera) $(REAL_CAMERA) $(EXTRA)

real-gpu: venv    ## the GPU recipe (needs CUDA), as the DVC experiment real-gpu
	$(BIN)/dvc exp run -n real-gpu $(REAL_GPU)
