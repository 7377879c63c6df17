# The two commands of the README. Both run the same idempotent set-up first.
.PHONY: setup demo test test-fast lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: lint
	.venv/bin/python -m pytest -q -ra -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Minutes instead of twenty: everything but the end-to-end tests marked slow.
test-fast: lint
	.venv/bin/python -m pytest -q -ra -n 2 --dist loadfile -m "not slow"

lint: setup
	.venv/bin/python -m ruff check sgvla tests bench
