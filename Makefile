# One-command set-up: `make demo` and `make test` both make sure the machine is ready first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := python3-gi python3-gst-1.0 python3-venv gir1.2-gst-rtsp-server-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools ffmpeg

.PHONY: setup debs demo test lint typecheck unit chaos bench bench-policy clean

setup: debs $(STAMP)

# Installs the Debian packages only when one is missing, so repeated runs cost nothing.
debs:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/streamwarden demo

# The long chaos run: faults on a seeded schedule for 120 s, then 1,000 add/remove cycles.
chaos: setup
	$(VENV)/bin/streamwarden chaos --streams 8 --duration 120 --seed 1 --churn-cycles 1000 --report chaos-report.md

# Benchmarks (issue 7): streamwarden vs bare gst-launch vs ffmpeg, recovery, API latency, profile.
# BENCH_ARGS=--quick for a ~3 min smoke run. Writes bench/results/<UTC>.md, latest.md and a PNG.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: debs $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

# Only the pure-Python recovery-policy micro-benchmark (seconds; no GStreamer, no cameras).
# BENCH_ARGS=--quick for a smoke run. Writes bench/results/policy.md.
bench-policy: setup
	$(PY) bench/policy_bench.py $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(VENV)/bin/pytest

unit: setup
	$(VENV)/bin/pytest tests/unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
