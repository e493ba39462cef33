# AtlasSeg: two commands for a new user.
#   make demo   set up .venv, then segment a synthetic CT phantom with the shipped demo model (offline)
#   make test   set up .venv with the test extras, then run the whole test suite
#   make test-quick   the fast loop while changing code: every test with no tier (Testing/tiers.py) plus one per tier
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first and explicitly: a plain "torch" requirement would pull a multi-GB CUDA build on machines without it.
TORCH  ?= torch==2.13.0

.PHONY: demo test test-quick screenshots bench bench-quick bench-batch bench-review clean chromium dicom-tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test,cluster]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/atlasseg demo -o demo_output --overwrite

test: $(VENV)/.installed-test chromium dicom-tools
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Every test not marked engine, subprocess, external or slow (marks worked out from each test's code, Testing/tiers.py)
# plus one representative of each of those tiers (quick_representative): a few minutes on two cores (README).
test-quick: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not (engine or subprocess or external or slow) or quick_representative"

# Refresh the README pictures that tests draw (tests themselves write only into temporary folders) and the overlay.
# The panel pictures need PySide6 in a throwaway venv: see Testing/slicer_module/render_panel.py.
screenshots: $(VENV)/.installed-test
	ATLASSEG_SCREENSHOTS="$(CURDIR)/Resources/Screenshots" $(BIN)/python -m pytest -q -p no:cacheprovider \
	  Testing/slicer_module/test_review_screenshots.py
	$(BIN)/python Testing/slicer_module/render_overlay.py

# The report test draws report.html in headless Chromium. Installed when missing and allowed (root with apt-get);
# elsewhere, or if the install fails, that one test is skipped and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
	    || echo "chromium could not be installed: the report's browser test will be skipped"; \
	else echo "chromium is not installed (needs root with apt-get): the report's browser test will be skipped"; fi

# The export tests check DICOM SEG/RTSTRUCT with the tools a hospital or reviewer uses: dciodvfy (dicom3tools) and
# plastimatch, Debian packages, installed when missing and allowed (root with apt-get); elsewhere, or if the install
# fails, the tests that need them are skipped and say why. dcmqi (segimage2itkimage) comes with the test extra.
dicom-tools:
	@missing=""; command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	command -v plastimatch >/dev/null 2>&1 || missing="$$missing plastimatch"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
	    || echo "$$missing could not be installed: the export tests that need them will be skipped"; \
	else echo "$$missing not installed (needs root with apt-get): the export tests that need them will be skipped"; fi

# Per model and backend (torch, OpenVINO fp32/bf16, INT8) on a 512x512x300 CT: one window measured, the quality
# presets' full runs extrapolated and labelled ESTIMATE, SuPreM SegResNet balanced and fast measured end to end
# (about an hour on 2 cores; README table).
bench: $(VENV)/.installed-test
	$(BIN)/python Testing/bench/bench_models.py --no-plain --backends torch openvino int8 --pipeline --pipeline-modes balanced,fast

# torch fp32 against OpenVINO INT8 (and fp32), quality presets' windows, the subset cascade on the full-length
# phantom; under 10 minutes; ends in one RESULT line.
bench-quick: $(VENV)/.installed-test
	$(BIN)/python Testing/bench/bench_quick.py

# atlasseg batch: cases/hour in-process vs Ray with 1 and 2 workers on this machine (a few minutes).
bench-batch: $(VENV)/.installed-test
	$(BIN)/python Testing/bench/bench_batch.py

# Sensitivity slider and one-click removal vs Slicer's Islands-effect path, 512x512x300 real CT.
bench-review: $(VENV)/.installed-test
	$(BIN)/python Testing/bench/bench_review.py

clean:
	rm -rf $(VENV) demo_output
