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

.PHONY: setup browser demo test test-fast lint clean

setup: $(STAMP) browser

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
