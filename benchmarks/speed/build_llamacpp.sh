#!/usr/bin/env bash
# Build llama.cpp's benchmark tools (llama-bench, llama-quantize, llama-perplexity, llama-imatrix) from the llama.cpp source
# vendored in PyPI's llama-cpp-python sdist: a peer to measure against, never a torchslim dependency.
# About 6-15 minutes on 2 cores. Result: benchmarks/.cache/llama.cpp/build/bin (or $LLAMA_CPP_BIN if set).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$HERE/.cache/llama.cpp"
# On AMX machines a second llama-bench without AMX: the native build's AMX int8 prefill kernels died with SIGILL
# (tileloadd on unconfigured tiles) on an AMX Xeon VM; the benchmark then times quantized prefill with this one.
no_amx() {
  grep -q amx_int8 /proc/cpuinfo 2>/dev/null || return 0
  [ -x "$DEST/build-noamx/bin/llama-bench" ] && return 0
  (cd "$DEST" && cmake -B build-noamx -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX_VNNI=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release > build-noamx.log \
    && cmake --build build-noamx -j"$(nproc)" --target llama-bench >> build-noamx.log)
  echo "built (AMX off): $DEST/build-noamx/bin"
}
if [ -x "$DEST/build/bin/llama-bench" ] && [ -x "$DEST/build/bin/llama-imatrix" ]; then
  echo "llama.cpp tools already built in $DEST/build/bin"; no_amx; exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$TMP"
tar xzf "$TMP"/llama_cpp_python-"$VERSION".tar.gz -C "$TMP"
rm -rf "$DEST" && mkdir -p "$(dirname "$DEST")"
mv "$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST"
cd "$DEST"
cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release > build.log
cmake --build build -j"$(nproc)" --target llama-bench llama-quantize llama-perplexity llama-imatrix >> build.log
echo "built: $DEST/build/bin"
no_amx
