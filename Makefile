# Emotion batch scoring. `make run` and `make test` work on a fresh machine (they run `make setup` first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPLOY_VENV ?= .venv-deploy
IMAGES ?= ../shared/data/facial_emotion_images/test
OUTPUT ?= predictions.csv
CONFIG ?= trainer/configs/vgg_bn_aug.toml
RUN ?= runs/vgg_bn_aug

.PHONY: setup setup-deploy run test train export quantize bench validate deploy teardown clean report-screenshots

setup: $(VENV)/.installed setup-deploy

# The runtime alone (onnxruntime, numpy, pillow, boto3, tqdm) is all `make run` needs: seconds, not a minute.
$(VENV)/.runtime-installed: requirements/runtime.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/runtime.txt
	touch $@

# Training, export, tests and benchmarks: TensorFlow, tf2onnx, pytest, moto, ruff, mypy on top.
$(VENV)/.installed: $(VENV)/.runtime-installed requirements/train.txt requirements/dev.txt
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $@

# SAM CLI pins boto3 exactly: it gets its own virtualenv, never the runtime's.
setup-deploy: $(DEPLOY_VENV)/.installed

$(DEPLOY_VENV)/.installed: requirements/deploy.txt
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/pip install -q -r requirements/deploy.txt
	touch $@

run: $(VENV)/.runtime-installed
	$(PY) -m batch_job run $(IMAGES) --output $(OUTPUT)
	@head -n 41 $(OUTPUT) | cut -c 1-160
	@$(PY) -m batch_job evaluate $(OUTPUT) 2>/dev/null || true

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

train: $(VENV)/.installed
	$(PY) -m trainer run $(CONFIG)

export: $(VENV)/.installed
	$(PY) -m converter $(RUN) --output models/emotion.onnx

# INT8 graphs, measured on the splits and the photos before they ship (models/*.int8.onnx, models/int8.json).
quantize: $(VENV)/.installed
	$(PY) -m converter.quantize

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache predictions.csv

bench: $(VENV)/.installed
	$(PY) bench/run.py

# Offline checks of template.yaml: sam validate --lint and cfn-lint (no Docker, no AWS account needed).
validate: setup-deploy
	bash infra/validate.sh

# sam build (needs Docker) + sam deploy (needs AWS credentials); see docs/cloud.md.
deploy: setup-deploy
	bash infra/deploy.sh

# Deletes the stack, keeps both buckets and their data (they are Retain): infra/teardown.sh says how to empty them.
teardown: setup-deploy
	bash infra/teardown.sh

# The review report on the test images and the photos, rendered by headless Chromium at desktop and phone widths:
# refreshes docs/images/report_desktop.png and report_phone.png (needs chromium: apt-get install chromium).
REPORT_DIR ?= /tmp/emotion-report
report-screenshots: $(VENV)/.runtime-installed
	rm -rf $(REPORT_DIR) && mkdir -p $(REPORT_DIR)
	$(PY) -m batch_job run ../shared/data/facial_emotion_images/test ../shared/photos -o $(REPORT_DIR)/predictions.csv
	$(PY) -m batch_job report $(REPORT_DIR)/predictions.csv --images . -o $(REPORT_DIR)/report.html
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2600 \
	  --screenshot=docs/images/report_desktop.png file://$(REPORT_DIR)/report.html
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=390,2600 \
	  --screenshot=docs/images/report_phone.png file://$(REPORT_DIR)/report.html
