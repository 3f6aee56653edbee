#!/usr/bin/env bash
# Drain and zero-downtime upgrade figures (docs/reliability.md, "Drain and
# upgrade"; issue 17): tests/drain.rs's upgrade loop under constant load
# (4 keep-alive HTTP clients, a gRPC unary loop, a gRPC stream loop and a
# new-connection prober on both ports) run ROUNDS times, and its SIGTERM drain.
#
#   benches/drain.sh              # 20 upgrades, ~2 min
#   ROUNDS=5 benches/drain.sh
#
# Prints the FIGURES lines the tests write.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export SWITCHYARD_UPGRADE_ROUNDS=${ROUNDS:-20}
cargo test --test drain -- --nocapture --test-threads 1 \
  upgrades_under_load_lose_nothing sigterm_closes_the_listeners_and_finishes_what_is_in_flight 2>&1 |
  grep -E '^FIGURES|^test |test result'
