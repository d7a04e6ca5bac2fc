#!/usr/bin/env bash
# schemathesis (PyPI) against the running binary's /openapi.json, all checks, bounded and
# deterministic: starts journeyd on a free loopback port, runs, stops it.
# Usage: tests/contract/schemathesis.sh [path/to/journeyd]   (default: target/debug/journeyd)
# SCHEMATHESIS_SEED (default 1) and SCHEMATHESIS_MAX_EXAMPLES (default 30) vary the run.
# Settings (413 as a rejection status): tests/contract/schemathesis.toml. Called by .ci/run.
#
# Excluded operations, with their reasons:
# - PUT /v1/rules: its body is a rules TOML file, which cannot be generated from a JSON
#   schema (any generated text is not a valid rule set, so every case is a 422), and an
#   accepted body would replace the rules of the instance under test mid-run, changing the
#   enums of the document the other operations are generated from. Its validation is tested
#   in crates/journey-api/tests/api.rs.
# - POST /v1/events: its body is NDJSON (application/x-ndjson), for which schemathesis has no
#   serializer ("Serialization not possible"). Covered by crates/journey-api/tests/api.rs and
#   the field-case tests.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-${CARGO_TARGET_DIR:-target}/debug/journeyd}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
JOURNEYD_LOG__LEVEL=warn JOURNEYD_HTTP__LISTEN="127.0.0.1:$port" \
  JOURNEYD_RULES__PATH=tests/field-cases/09-gzip-request-body/rules.toml JOURNEYD_RULES__WATCH=false \
  JOURNEYD_BREAKDOWN__SEGMENT_DIMENSIONS='["source", "first_touchpoint"]' \
  "$bin" run >/dev/null 2>&1 &
pid=$!
# The binary is stopped however the script ends (done, failed, interrupted, timed out).
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
trap stop EXIT
trap 'exit 143' INT TERM
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.2
done
# Bounded: a run takes about 1 to 2 minutes here; 10 minutes means something hangs.
timeout 600 schemathesis --config-file tests/contract/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" --checks all \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" --seed "${SCHEMATHESIS_SEED:-1}" \
  --generation-database none --no-color \
  --exclude-operation-id put_rules --exclude-operation-id events
