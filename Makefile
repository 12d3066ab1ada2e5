# spinepipe: two commands set everything up (README).
#   make demo   set up .venv/ and run the whole pipeline on the synthetic phantom (dvc repro)
#   make test   set up .venv/ (with test extras) and run the test suite
# Both are idempotent: the environment is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.spinepipe-installed
# reads one exact pin (e.g. "torch==2.13.0") from pyproject.toml, the one place versions live
PIN = $(shell $(PYTHON) -c "import tomllib,sys; d=tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']; print(next(x for x in d if x.split('==')[0]=='$(1)'))")

.PHONY: demo test bench mutation venv bytecode system-deps clean-venv help

help:
	@echo "make demo   set up .venv/ and run the pipeline on the phantom (dvc repro)"
	@echo "make test   set up .venv/ and run the tests"
	@echo "make bench  run the benchmarks in benchmarks/ (installs the peers they compare with)"
	@echo "make mutation  mutation-test the modules that hold the promises (MODULES=io,paths JOBS=n)"

venv: $(STAMP)

# Order matters (shared/STACK.md): torch's CPU build first; the headless OpenCV (two cv2
# distributions break each other); mmengine built from its sdist, whose setup.py then requires
# the headless OpenCV already present instead of opencv-python (its wheel hard-codes the
# latter); mmcv compiled with its ops against that torch (pip caches the wheel: ~6 min once per
# machine); then everything else from pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=25"
	$(PIP) install -q "$(call PIN,torch)" "$(call PIN,opencv-python-headless)" "$(call PIN,numpy)" ninja psutil wheel
	$(PIP) install -q "setuptools<70"
	$(PIP) install -q --no-build-isolation --no-binary mmengine "$(call PIN,mmengine)"
	MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install -q --no-build-isolation --no-binary mmcv "$(call PIN,mmcv)"
	$(PIP) install -q -e ".[test]"
	@$(PIP) list 2>/dev/null | grep -q '^opencv-python ' && { echo "opencv-python crept in (clashes with the headless build)"; exit 1; } || true
	$(PY) -c "import mmdet, mmseg, mmseg.models, mmdet.models; from mmcv.ops import RoIAlign, nms"
	@touch $(STAMP)

# Debian tools: the OCR that anonymize runs on every image (tesseract: the demo needs it too),
# and those the tests run for real: a PACS (orthanc), dcmtk (storescu, dcmj2pnm), dicom3tools
# (dciodvfy). Installed when missing and this is root with apt; otherwise the one command to run.
DEMO_TOOLS := tesseract:tesseract-ocr
SYSTEM_TOOLS := $(DEMO_TOOLS) Orthanc:orthanc storescu:dcmtk dcmj2pnm:dcmtk dciodvfy:dicom3tools openssl:openssl
TOOLS ?= $(SYSTEM_TOOLS)
system-deps:
	@missing=""; for pair in $(TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "spinepipe needs Debian packages that are missing. Install them with:"; \
	    echo "  sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# spinepipe's own modules compiled beside them (__pycache__/, ignored by git and DVC), as pip
# does for an installed package but not for this editable one; Python would cache them itself,
# except where PYTHONDONTWRITEBYTECODE is set (CI machines): then every command compiled them
# again (measured: 0.03-0.06 s of CPU per command start). Only what changed is compiled.
# Likewise pydicom's concept dictionary, which anonymize reads for code meanings: compiled into
# .venv/share/spinepipe/ (60 ms to import in every worker that meets a code, 5 ms compiled).
bytecode: $(STAMP)
	@$(PY) -m compileall -q -j 0 pipeline converters train > /dev/null
	@$(PY) -c "from converters.dicom.deid_table import write_code_table as w; w()"

test: $(STAMP) system-deps bytecode
	$(PY) -m pytest

# one line per stage (each stage's summary; mmengine's logs go to models/<model>/fold<k>/train.log)
demo: $(STAMP) bytecode
	@$(MAKE) --no-print-directory system-deps TOOLS="$(DEMO_TOOLS)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro -q
	@echo
	@echo "Done. The comparison: reports/report.html (tables: reports/tables/, per model: reports/metrics.json); trained models: models/<model>/fold0/; data: data/processed/, data/splits/. See README 'Where results appear'."

# benchmarks time the product against its peers (dicognito, dcmtk) and print ratios
bench: $(STAMP) bytecode
	@$(MAKE) --no-print-directory system-deps TOOLS="$(DEMO_TOOLS)"
	$(PIP) install -q -e ".[bench,test]"
	$(PY) benchmarks/bench_phantom.py
	$(PY) benchmarks/bench_export.py
	$(PY) benchmarks/bench_anonymize.py
	$(PY) benchmarks/bench_anonymize.py --n 200 --height 2870 --width 1100
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_agreement.py
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_commands.py
	$(PY) benchmarks/bench_measures.py
	$(PY) benchmarks/bench_seg.py

# mutation testing of the modules that hold the promises (issue 30): mutmut per module with
# only its tests, in build/mutation/<module>/; a score table; exit 1 below 90 %.
# MODULES=io,paths (default: every module)  JOBS=n (default: every core). Not part of make test.
mutation: $(STAMP) system-deps
	$(PY) tests/mutation.py $(if $(MODULES),--modules $(MODULES)) $(if $(JOBS),--jobs $(JOBS))

clean-venv:
	rm -rf $(VENV)
