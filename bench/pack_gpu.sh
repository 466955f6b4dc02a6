#!/usr/bin/env bash
# Packs what bench/gpu_all.sh needs from a CUDA build into one compressed file that the GPU
# machine unpacks (binaries stripped; the shared libraries that machine lacks).
#   bash bench/pack_gpu.sh BUILD_DIR OUT.tar.xz
set -euo pipefail
build=$1 out=$2 tmp=$(mktemp -d)
mkdir -p "$tmp/lib"
cp "$build"/tests/test_cuda* "$build/bench/train_step" "$build/bench/generate" "$build/bench/kernels" "$build/bench/optim" "$build/bench/attention" "$build/bench/gemv_variants" "$build/bench/gemm_decode_variants" "$build/bench/gemm_wgmma_variants" "$build/bench/lora_grads_variants" "$build/anneal" "$tmp/"
strip "$tmp"/test_cuda* "$tmp/train_step" "$tmp/generate" "$tmp/kernels" "$tmp/optim" "$tmp/attention" "$tmp/gemv_variants" "$tmp/gemm_decode_variants" "$tmp/gemm_wgmma_variants" "$tmp/lora_grads_variants" "$tmp/anneal"
for l in libarchive.so.13 libyaml-0.so.2 libgfortran.so.5 libquadmath.so.0 libsubunit.so.0; do
  cp -L "/lib/x86_64-linux-gnu/$l" "$tmp/lib/"
done
cp -L /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 "$tmp/lib/"
tar -cJf "$out" -C "$tmp" .
rm -rf "$tmp"
du -h "$out"
