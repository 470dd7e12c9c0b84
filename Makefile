# The two commands a user needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := .demo
# System tools the tests and the demo drive as real peers. The QEMU guest
# test (tests/vcrypto/test_qemu_guest.py) needs QEMU, a static busybox, gcc,
# cpio and depmod; "dpkg:PKG" means "package PKG installed" (no command tells
# busybox-static from busybox). nghttp/h2load drive the HTTP/2 tests; headless
# chromium is the client that offers the post-quantum hybrid X25519MLKEM768.
SYSTEM_TOOLS := openssl:openssl curl:curl gnutls-cli:gnutls-bin nghttp:nghttp2-client h2load:nghttp2-client \
  qemu-system-x86_64:qemu-system-x86 dpkg:busybox-static gcc:gcc cpio:cpio depmod:kmod \
  chromium:chromium

.PHONY: run test venv sysdeps demo-cert check-config clean bench bench-quick benchdeps bench-mechanisms bench-onecore

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# $(call apt_install,cmd:pkg ...): apt-get installs the package of every
# command that is missing, and every package named as dpkg:pkg that is not
# installed (CI and fresh machines run as root; else sudo).
define apt_install
	@missing=""; for pair in $(1); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$$cmd" = dpkg ]; then \
	    dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' \
	      || missing="$$missing $$pkg"; \
	  else command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

sysdeps:
	$(call apt_install,$(SYSTEM_TOOLS))

demo-cert: $(DEMO_DIR)/cert.pem

$(DEMO_DIR)/cert.pem: | sysdeps
	mkdir -p $(DEMO_DIR)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
	  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(DEMO_DIR)/key.pem -out $(DEMO_DIR)/cert.pem 2>/dev/null

test: venv sysdeps
	$(PY) -m pytest -q

run: venv sysdeps demo-cert
	$(VENV)/bin/vcproxy run --config config/vcproxy.yaml

check-config: venv
	$(VENV)/bin/vcproxy check-config config/vcproxy.yaml

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .hypothesis .cache/qemu-guest

# Benchmarks (bench/README.md): four configurations side by side, results in
# bench/results/. Load generator: h2load (Debian nghttp2-client). matplotlib is
# installed into the venv here only, for the PNG plots; it is not a project dependency.
BENCH_TOOLS := h2load:nghttp2-client wrk:wrk nginx:nginx-light taskset:util-linux

benchdeps:
	$(call apt_install,$(BENCH_TOOLS))

bench: venv sysdeps benchdeps
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) bench/run.py --mode full

bench-quick: venv sysdeps benchdeps
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) bench/run.py --mode quick

# CPU per request / MiB / handshake of each terminator's process tree pinned to one core (bench/onecore.py).
bench-onecore: venv sysdeps benchdeps
	$(PY) bench/onecore.py

# vcrypto's mechanisms under make run's config and a bounded load (bench/mechanisms_load.py).
bench-mechanisms: venv sysdeps demo-cert
	$(PY) bench/mechanisms_load.py
