# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# The lip-sync meter and photo framing (MediaPipe) live in their own venv: mediapipe 0.10.21 needs numpy<2 and the
# project needs numpy 2. `actorcast setup` makes it (models/mediapipe_env.py); in a checkout it goes here.
METER_VENV  ?= .venv-meter
METER_STAMP := $(METER_VENV)/.installed-stamp
METER_REQS  := models/meter-requirements.txt
# Ray binds and advertises 127.0.0.1 only (see ensure_ray in actors/engine.py); tests must never leave loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install meter demo test test-fast bench clean

install: $(STAMP) $(METER_STAMP)

meter: $(METER_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,pipecat,livekit]'
	touch $(STAMP)

# The same command a pip user runs, pointed at the checkout's folder; it rebuilds only when the requirements changed.
$(METER_STAMP): $(METER_REQS) | $(STAMP)
	ACTORCAST_METER_VENV=$(METER_VENV) $(VENV)/bin/actorcast setup
	touch $(METER_STAMP)

demo: install
	$(VENV)/bin/actorcast render assets/sample_speech.wav --identity 3 -o demo.mp4
	@echo "demo output: $(CURDIR)/demo.mp4"

test: install
	$(VENV)/bin/pytest -q

# The tests not marked slow: a quicker check while working (`make test` and CI run them all).
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

# Every benchmark, full size (each writes bench-out/NAME.json), then bench/RESULTS.md from them.
bench: install
	for b in data models cache render live portraits; do $(PY) bench/$$b.py --out bench-out || exit 1; done
	$(PY) bench/results.py --out bench/RESULTS.md models/weights/tiny/eval.json bench-out

clean:
	rm -rf $(VENV) $(METER_VENV) bench-out test-artifacts preview.mp4 demo.mp4
