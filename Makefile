# The two commands of the README: `make demo` and `make test`. Both set the environment up first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vpt-installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

TABLE_TARGETS := table-reward-losses table-bpgo table-grpo-variants table-grpo-speed table-dpo-beta table-nrg-weights
REPORT := $(CURDIR)/demo/pipeline/report

.PHONY: setup browser demo tables test test-all bench $(TABLE_TARGETS) clean

setup: $(STAMP)

# torch first, from the exact version: a later requirement on "torch" is then already satisfied and pip never
# reaches for the CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the report's browser test (Debian's package; needs root and apt, as on CI). Without it the
# browser checks are skipped and say so.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "browser: chromium is not installed and could not be (needs root and apt); browser checks skip"

# The toy world, then the whole pipeline (SFT -> GRPO -> DPO -> guided -> report), then the report in a real browser.
demo: setup browser
	$(MAKE) -C examples demo VPT=$(CURDIR)/$(BIN)/vpt OUT=$(CURDIR)/demo \
		$(if $(wildcard demo/tables/*.txt),TABLES=$(CURDIR)/demo/tables)
	VPT_REPORT=$(REPORT)/index.html VPT_TEST_ARTIFACTS=$(CURDIR)/demo/pipeline $(BIN)/python -m pytest -q -rs \
		-p no:cacheprovider tests/report/test_report_browser.py -k given_report
	@echo "report: $(REPORT)/index.html"

# Every table-* target, each one's output kept in demo/tables/, then the demo's report again with them in it.
tables: setup
	mkdir -p demo/tables
	$(foreach table,$(TABLE_TARGETS),$(MAKE) --no-print-directory -s $(table) > demo/tables/$(table).txt.part && \
		mv demo/tables/$(table).txt.part demo/tables/$(table).txt && cat demo/tables/$(table).txt &&) true
	$(MAKE) demo

# VideoAlign Fig. 2/3 direction on the toy world: held-out accuracy of BTT vs BT vs regression training.
table-reward-losses: setup
	$(MAKE) -C examples table-reward-losses PYTHON=$(CURDIR)/$(BIN)/python OUT=$(CURDIR)/demo

# TeleBoost's BPGO claim on the toy world: true-reward gain of BPGO vs GRPO under a noisy reward, 3 seeds.
table-bpgo: setup
	$(MAKE) -C examples/grpo table-bpgo PYTHON=$(CURDIR)/$(BIN)/python OUT=$(CURDIR)/demo

# The GRPO family side by side on the toy world (GRPO, BPGO paper/release, ViPO both maps, TempFlow, GRPO-Guard,
# MixGRPO, DPPO): true-reward gain with a clean and a noisy reward, 3 seeds, wall time per iteration (~40 min).
table-grpo-variants: setup
	$(BIN)/python benchmarks/table_grpo_variants.py --out $(CURDIR)/demo/table-grpo-variants

# How fast the example loop learns rewards it was not tuned on: margin over a negated-reward control, in within-group
# stds of the base samples, after 6 iterations, before and after the loop's tuning.
table-grpo-speed: setup
	$(BIN)/python benchmarks/table_grpo_speed.py --out $(CURDIR)/demo/table-grpo-speed

# VideoAlign's beta claim on the toy world: constant beta vs beta_t = beta(1-sigma)^2, reward win rate and velocity
# drift from the reference by noise level, 3 seeds.
table-dpo-beta: setup
	$(BIN)/python benchmarks/table_dpo_beta.py

table-nrg-weights: setup
	$(BIN)/python benchmarks/table_nrg_weights.py

# Two single-threaded worker processes (one per core of a 2-core machine); a test module stays on one worker, so
# its module-scoped fixtures are built once.
test: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadscope

test-all: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadscope -m ''

bench: setup
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_encoding.py
	$(BIN)/python benchmarks/bench_videoreward.py
	$(BIN)/python benchmarks/bench_build_prefs.py
	$(BIN)/python benchmarks/bench_rollouts.py
	$(BIN)/python benchmarks/bench_grpo.py
	$(BIN)/python benchmarks/bench_mixgrpo.py
	$(BIN)/python benchmarks/bench_dpo.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf demo build dist *.egg-info
