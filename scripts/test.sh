#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, doc tests, and the integration tests that start
# the real rpyc-classic binary. This is the README's test command; .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests start the server binary; build it first so the first test does not pay
# for the build inside its start-up timeout.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast

# Stock Python RPyC clients against rpyc-classic and against stock rpyc_classic.py (issue 6);
# creates target/py-venv with rpyc==6.0.2 and pytest if it is missing.
bash scripts/python-tests.sh
