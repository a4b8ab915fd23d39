#!/usr/bin/env bash
# The peer servers of bench/serving.py (Hugging Face `transformers serve`, llama.cpp through
# llama-cpp-python's server) and guidellm, in their own virtualenv so that nothing they pull
# can change Tessera's .venv. Idempotent: a second run only checks.
#
#   bash bench/setup_peers.sh          # creates bench/.venv-peers (git-ignored)
#
# torch is pinned to 2.13.0 in every pip call: that release is the CPU build on these
# machines, and anything unpinned that asks for torch pulls a multi-GB CUDA build.
# llama-cpp-python builds llama.cpp from source (about 8 minutes on 2 cores), so its wheel is
# built once and cached under bench/.cache/wheels/<cpu-flags-hash>/: it is compiled for this
# CPU (GGML_NATIVE), and a machine with other instruction sets gets its own build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${PEERS_VENV:-bench/.venv-peers}
CACHE=${BENCH_CACHE:-bench/.cache}
TORCH=torch==2.13.0
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.24.0}
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
GUIDELLM_VERSION=${GUIDELLM_VERSION:-0.8.1}
STAMP=$VENV/.peers-stamp-$TRANSFORMERS_VERSION-$LLAMA_CPP_VERSION-$GUIDELLM_VERSION

if [ -f "$STAMP" ]; then
  echo "peers venv ready: $VENV"
  exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet "$TORCH"
# gguf + accelerate: transformers reads the GGUF once to make the Hugging Face folder it serves.
"${PIP[@]}" install --quiet "$TORCH" "transformers[serving]==$TRANSFORMERS_VERSION" gguf accelerate

cpu_tag=$(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-10)
wheels="$CACHE/wheels/$cpu_tag"
wheel=$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  mkdir -p "$wheels"
  echo "building llama-cpp-python $LLAMA_CPP_VERSION from source (minutes)..."
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${PIP[@]}" wheel --quiet --no-deps --no-binary llama-cpp-python -w "$wheels" \
    "llama-cpp-python==$LLAMA_CPP_VERSION"
  wheel=$(ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -n1)
fi
"${PIP[@]}" install --quiet "$TORCH" "${wheel}[server]"

"${PIP[@]}" install --quiet "$TORCH" "guidellm==$GUIDELLM_VERSION"
"${PIP[@]}" check
"$VENV/bin/python" -c "import torch, transformers, llama_cpp; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'llama_cpp', llama_cpp.__version__)"
touch "$STAMP"
echo "peers venv ready: $VENV"
