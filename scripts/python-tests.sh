#!/usr/bin/env bash
# Stock Python RPyC clients against rpyc-classic (issue 6): the pytest suite in
# integration-tests/python runs every test against our server and against stock rpyc_classic.py.
#
# Creates the virtual environment target/py-venv (rpyc==6.0.2 and pytest) only if it is missing,
# builds the server binary, and runs pytest. Extra arguments go to pytest, e.g.
#   bash scripts/python-tests.sh -k callbacks
# RPYC_COMPAT_SERVERS=rpyc-rs (or stock) limits the run to one server.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/py-venv
PYTHON="${PYTHON:-python3}"
if ! "$VENV/bin/python" -c 'import rpyc, pytest; assert rpyc.__version__ == "6.0.2"' 2>/dev/null; then
  echo "== creating $VENV (rpyc==6.0.2, pytest)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'rpyc==6.0.2' pytest
fi

echo "== building rpyc-classic"
cargo build -p rpyc-server --bin rpyc-classic

echo "== pytest: stock RPyC clients against rpyc-classic and stock rpyc_classic.py"
export RPYC_CLASSIC_BIN="${RPYC_CLASSIC_BIN:-$PWD/target/debug/rpyc-classic}"
cd integration-tests/python
exec timeout 1200 "../../$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
