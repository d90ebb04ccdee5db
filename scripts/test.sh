#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (CTest). ../shared must be beside
# the checkout (or TOGA_SHARED set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j1 --timeout 900
