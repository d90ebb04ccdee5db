#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (CTest). ../shared must be beside
# the checkout: the tests that need its data would otherwise skip, so its absence is an error here
# unless TOGA_ALLOW_MISSING_SHARED=1 says a run without it is intended.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/data ] && [ "${TOGA_ALLOW_MISSING_SHARED:-}" != 1 ]; then
  echo "error: $(cd .. && pwd)/shared/data is missing: the tests that need the shipped models and text would be" \
       "skipped. Put ../shared beside this checkout, or set TOGA_ALLOW_MISSING_SHARED=1 to run without it." >&2
  exit 1
fi
scripts/install_deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j1 --timeout 900
