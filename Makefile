PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
CONSTRAINTS := benchmarks/constraints.txt

.PHONY: demo test lint bench clean docs docs-serve docs-figures docs-check docs-claims gpu-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.installed-demo: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[experiments]"
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The constraints file pins torch so that the peers' requirements never pull another torch build.
$(VENV)/.installed-bench: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test,benchmark]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/natgrad reproduce --quick

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -n 2

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

$(VENV)/.installed-docs: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test,docs]"
	touch $@

# The site from docs/ (mkdocs.yml): strict, so a warning or a broken link fails the build.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs: $(VENV)/.installed-docs
	$(MKDOCS) build --strict

docs-serve: $(VENV)/.installed-docs
	$(MKDOCS) serve

# Regenerates the committed figures under docs/figures/ (guides and benchmarks).
docs-figures: $(VENV)/.installed-docs
	OMP_NUM_THREADS=1 $(BIN)/python docs/_scripts/figures.py

# The built site and the HTML report of a quick reproduction in headless Chromium: console errors, missing
# images and broken internal links fail; screenshots go to build/docs-check/screenshots/. The reproduction
# (every experiment, --quick, about 2 minutes on 2 cores; DOCS_CHECK_RUN="NAME ..." for a subset) resumes in
# build/docs-check/run (delete it to recompute); its claim table lands in build/docs-check/quick_claims.md,
# and `make docs-claims` copies it to the reproduction page.
DOCS_CHECK := build/docs-check
DOCS_CHECK_RUN ?=
docs-check: docs
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	  else echo "docs-check needs Chromium and its driver: apt-get install chromium chromium-driver" >&2; exit 1; fi; }
	rm -rf $(DOCS_CHECK)/screenshots && mkdir -p $(DOCS_CHECK)
	@# exit 1 (a claim fails) still gives a report to check; only a usage error (2) or worse stops here
	$(BIN)/natgrad reproduce $(DOCS_CHECK_RUN) --quick --out $(DOCS_CHECK)/run > $(DOCS_CHECK)/reproduce.log; \
	  status=$$?; [ $$status -le 1 ] || { tail -5 $(DOCS_CHECK)/reproduce.log; exit $$status; }
	$(BIN)/python docs/_scripts/claims_table.py $(DOCS_CHECK)/run \
	  "natgrad reproduce $(if $(DOCS_CHECK_RUN),$(DOCS_CHECK_RUN) ,)--quick" > $(DOCS_CHECK)/quick_claims.md
	$(BIN)/python docs/_scripts/check_site.py site $(DOCS_CHECK)/run/report.html --out $(DOCS_CHECK)

docs-claims:
	cp $(DOCS_CHECK)/quick_claims.md docs/_snippets/quick_claims.md

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/structured_vs_peers.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info

# Route tests on CUDA (float32 and float64; skipped without CUDA) and the scale benchmark on the GPU.
gpu-check: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/test_gpu_routes.py tests/test_structured_krylov.py -q
	$(BIN)/python benchmarks/scale.py --device cuda --no-peers --out benchmarks/results/scale_cuda.json
