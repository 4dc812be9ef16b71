# Two entry points for people: `make run` and `make test`. Both create and use .venv/ in this folder.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/dedup
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv run test lint typecheck test-sqlite test-postgres bench clean

venv: $(VENV)/.installed

# Reinstall only when the dependency list changes; the marker makes `make venv` idempotent.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: venv
	DEBUG=1 $(PY) manage.py run_product

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy .

test-sqlite: venv
	env -u DATABASE_URL $(PY) -m pytest -q -p no:cacheprovider

test-postgres: venv
	@if $(PY) scripts/pg_ready.py "$(PG_TEST_URL)"; then \
		echo "== PostgreSQL pass ($(PG_TEST_URL))"; \
		DATABASE_URL="$(PG_TEST_URL)" $(PY) -m pytest -q -p no:cacheprovider; \
	elif [ "$$REQUIRE_POSTGRES" = "1" ]; then \
		echo "FAIL: REQUIRE_POSTGRES=1 and PostgreSQL is unreachable"; exit 1; \
	else \
		echo "SKIP: PostgreSQL pass skipped: not reachable at $(PG_TEST_URL)"; \
	fi

test: lint typecheck test-sqlite test-postgres

# Every bench runs even when one misses its target (some exit 1 then); the missed ones are named at the end.
bench: venv
	@failed=""; for b in bench/bench_*.py; do echo "== $$b"; DEBUG=1 $(PY) $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "benches that failed or missed a target:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
