#!/bin/sh
# The optional CUDA build (docs/DISTRIBUTED.md): toga against the libtorch that the PyPI torch wheel
# ships (CUDA + NCCL), beside the default build against Debian's CPU libtorch. CI does not run it.
#   python3 -m venv venv-cuda && venv-cuda/bin/pip install torch
#   PYTHON=venv-cuda/bin/python scripts/build_cuda.sh [build-dir]
# Needs nvcc (the CUDA toolkit) for CMake's CUDA detection; nothing here runs on a GPU.
set -eu
PYTHON=${PYTHON:-python3}
BUILD=${1:-build-cuda}
PREFIX=$("$PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
# The CUDA libraries the wheel was built with (nvidia-* wheels beside torch): the linker must resolve
# libtorch_cuda's NCCL, cuBLAS, ... there, not in the toolkit's older copies under CUDA_HOME.
RPATH_LINK=$(ls -d "$LIB"/../../nvidia/*/lib 2>/dev/null | tr '\n' ':')
# The wheel's TorchConfig finds its libraries by name with the system paths first: with Debian's
# libtorch-dev installed it would link libtorch.so and libc10.so from /usr/lib. Name them.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTOGA_CUDA=ON -DTOGA_BUILD_BENCH=OFF \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DTORCH_LIBRARY="$LIB/libtorch.so" -Dc10_LIBRARY="$LIB/libc10.so" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,${RPATH_LINK}" \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES:-90}" ${CUDA_HOME:+-DCUDAToolkit_ROOT=$CUDA_HOME}
cmake --build "$BUILD" -j"$(nproc)"
