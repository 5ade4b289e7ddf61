# Two entry points a newcomer types on a fresh machine (see README):
#   make demo   set up, then run the whole path on the synthetic shapes world
#   make test   set up, then run the whole test suite
#   make test-fast  the same without the tests marked slow (each over ~30 s on 2 cores)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch and torchvision are pinned: pip on Python 3.11 takes these two from the machine's disk.
TORCH_PINS = torch==2.14.1 torchvision==0.29.1
STAMP   = $(VENV)/.zscir-installed

.PHONY: setup browser cpp-deps demo test test-fast lint clean

setup: $(STAMP) browser cpp-deps

# cpp/ (zscir_query) builds with these Debian packages and the openvino wheel's C++ headers (the
# [openvino] extra); tests/test_cpp_query.py builds it. Installed as root; otherwise the C++ tests skip.
CPP_DEBS = cmake g++ libjpeg-dev libpng-dev libsqlite3-dev nlohmann-json3-dev libfaiss-dev libssl-dev \
           libblas-dev liblapack-dev
cpp-deps:
	@missing=$$(for p in $(CPP_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) && echo "installed $$missing"; \
	  else echo "note: not root: the C++ tests skip until these are installed: sudo apt-get install $$missing"; fi; \
	fi

# The search page's test drives Debian's Chromium (Playwright uses it through executable_path: no
# browser download). Installed as root; otherwise the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) && echo "installed chromium"; \
	  else echo "note: Debian's chromium is missing and this is not root: the page test will skip" \
	            "(sudo apt-get install chromium)"; fi; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[cpu,train,serve,milvus,ray,openvino,dev]' $(TORCH_PINS)
	touch $(STAMP)

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache zscir-out
