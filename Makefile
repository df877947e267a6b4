# The README's two commands: `make test` and `make book`. Both create .venv on first use.
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= proxy
BIN      = $(VENV)/bin
STAMP    = $(VENV)/.installed

.PHONY: test book data clean-book help

help:
	@echo "make test                 create .venv if absent, install pinned deps, run the test suite"
	@echo "make book [PROFILE=...]   prepare data, execute the book's notebooks, build the HTML book"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name replicate --display-name "replicate" >/dev/null
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

book: $(STAMP)
	$(BIN)/replicate book --profile $(PROFILE)

data: $(STAMP)
	$(BIN)/replicate data synth --profile $(PROFILE) --out data/$(PROFILE)

clean-book:
	rm -rf book/_build book/executed
