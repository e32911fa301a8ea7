# The two set-up commands of the README: `make demo` and `make test`. Both create .venv if missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
# Ray binds and advertises 127.0.0.1 only (see cluster/ray_env.py); tests must never leave loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actorcast render assets/sample_speech.wav --identity 3 -o demo.mp4
	@echo "demo output: $(CURDIR)/demo.mp4"

test: $(STAMP)
	$(VENV)/bin/pytest -q

# Every benchmark, full size (each writes bench-out/NAME.json; figures go in the README).
bench: $(STAMP)
	for b in data models cache render live; do $(PY) bench/$$b.py --out bench-out || exit 1; done

clean:
	rm -rf $(VENV) bench-out test-artifacts preview.mp4 demo.mp4
