#!/usr/bin/env bash
# The peer servers of bench/serving.py (Hugging Face `transformers serve`, llama.cpp's C++
# `llama-server`) and guidellm, in their own virtualenv so that nothing they pull can change
# Tessera's .venv. Idempotent: a second run only checks.
#
#   bash bench/setup_peers.sh          # creates bench/.venv-peers (git-ignored)
#
# torch is pinned to 2.13.0 in every pip call: that release is the CPU build on these
# machines, and anything unpinned that asks for torch pulls a multi-GB CUDA build.
# llama-server is built from the llama.cpp sources vendored in the llama-cpp-python sdist
# (about 10 minutes on 2 cores, with cmake from PyPI in the peers venv), once: it is compiled
# for this CPU (GGML_NATIVE), statically linked, and cached as
# bench/.cache/llama.cpp/<version>-<cpu-flags-hash>/llama-server, so a machine with other
# instruction sets gets its own build. The venv gets a copy as bin/llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${PEERS_VENV:-bench/.venv-peers}
CACHE=${BENCH_CACHE:-bench/.cache}
TORCH=torch==2.13.0
TRANSFORMERS_VERSION=${TRANSFORMERS_VERSION:-5.24.0}
LLAMA_CPP_VERSION=${LLAMA_CPP_VERSION:-0.3.36}
GUIDELLM_VERSION=${GUIDELLM_VERSION:-0.8.1}
CMAKE_VERSION=${CMAKE_VERSION:-4.4.5}
# The build is for this CPU: the stamp names its flags, so another CPU re-checks the binary.
cpu_tag=$(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-10)
STAMP=$VENV/.peers-stamp-$TRANSFORMERS_VERSION-$LLAMA_CPP_VERSION-$GUIDELLM_VERSION-$cpu_tag

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

server_dir="$CACHE/llama.cpp/$LLAMA_CPP_VERSION-$cpu_tag"
server="$server_dir/llama-server"
if [ ! -x "$server" ]; then
  "${PIP[@]}" install --quiet "cmake==$CMAKE_VERSION"
  mkdir -p "$server_dir"
  work=$(mktemp -d "$server_dir/build.XXXXXX")
  log="$server_dir/build.log"  # kept: the cmake output of the last build
  trap 'rm -rf "$work"; test -x "$server" || echo "llama-server build failed: see $log" >&2' EXIT
  echo "building llama.cpp's llama-server ($LLAMA_CPP_VERSION) from source (about 10 minutes)..."
  start=$(date +%s)
  "${PIP[@]}" download --quiet --no-deps --no-binary :all: -d "$work" \
    "llama-cpp-python==$LLAMA_CPP_VERSION"
  tar xzf "$work"/llama_cpp_python-"$LLAMA_CPP_VERSION".tar.gz -C "$work"
  src="$work/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  "$VENV/bin/cmake" -S "$src" -B "$work/build" -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release > "$log" 2>&1
  "$VENV/bin/cmake" --build "$work/build" -j"$(nproc)" --target llama-server >> "$log" 2>&1
  install -m 755 "$work/build/bin/llama-server" "$server.tmp"
  mv "$server.tmp" "$server"
  rm -rf "$work"
  trap - EXIT
  echo "llama-server built in $(($(date +%s) - start)) s: $server"
fi
install -m 755 "$server" "$VENV/bin/llama-server"

"${PIP[@]}" install --quiet "$TORCH" "guidellm==$GUIDELLM_VERSION"
"${PIP[@]}" check
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, \
'transformers', transformers.__version__)"
"$VENV/bin/llama-server" --version
touch "$STAMP"
echo "peers venv ready: $VENV"
