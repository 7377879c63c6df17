# The two commands of the README. Both run the same idempotent set-up first.
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: lint
	.venv/bin/python -m pytest -q -ra

lint: setup
	.venv/bin/python -m ruff check sgvla tests bench
