#!/usr/bin/env bash
# Debian 12 packages toga builds against (the product needs nothing else), plus the test-side
# oracle from PyPI (Hugging Face `tokenizers`). Idempotent; uses sudo when not root.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(
  cmake g++ make pkg-config
  libtorch-dev libopenblas0-openmp      # libtorch 1.13 (CPU) with the OpenMP OpenBLAS (same thread pool)
  libgloo-dev                           # c10d's Gloo backend: a search over several processes
  libicu-dev libbz2-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev                  # tests only: the reference SentencePiece tokenizer
  libgtest-dev libbenchmark-dev
  python3 python3-matplotlib gnuplot-nox
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
# The reference BLAS is ~40x slower than OpenBLAS here: make sure the OpenMP build is the one used.
$SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu \
  /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 >/dev/null 2>&1 || true
$SUDO update-alternatives --set liblapack.so.3-x86_64-linux-gnu \
  /usr/lib/x86_64-linux-gnu/openblas-openmp/liblapack.so.3 >/dev/null 2>&1 || true
# Test oracle for the byte-level BPE tokenizer (tests skip with a message without it).
python3 -c "import tokenizers" 2>/dev/null || python3 -m pip install -q tokenizers || \
  echo "warning: could not install the Python 'tokenizers' package; the tokenizer cross-check will skip"
