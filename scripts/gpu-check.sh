#!/usr/bin/env bash
# The GPU check: golden parity and timings of rectok on a GPU, ready for the day one is lent.
#
#   scripts/gpu-check.sh pack [--split] [PACK]
#                                          here: build the Vulkan binaries, strip them and pack them with
#                                          the golden cases into PACK (default gpu-check.tar.zst, ~48 MiB);
#                                          --split writes PACK-golden.tar.zst and PACK-bench.tar.zst instead
#                                          (~24 MiB each, for transports that also carry a checkout)
#   scripts/gpu-check.sh run [--tiny] [PACK...]
#                                          on the GPU machine (x86-64 Linux with a Vulkan driver, nothing
#                                          else): unpack, run the 16 golden cases on the GPU, then time
#                                          encode/decode of rectok_b (batch 1 and 32), the DiT^DH-XL forward
#                                          (batch 1 and 32), one 50-step sample and one training step of
#                                          rectok_b and DiT^DH-S, in f32 and f16 (each part where its
#                                          binary was packed)
#
# `run --tiny` uses the tiny models and batches, so the whole check runs end to end on a software driver
# (Mesa's lavapipe) in a few minutes; CI does not run it, tests/vulkan.rs covers lavapipe there.
#
# Side by side with PyTorch: where `python3` imports torch with CUDA and RECTOK_REPO names a checkout of the
# official RecTok code, the reference's forward passes are timed at the same sizes and precision just before
# ours (benches/reference_*.py) and the bench tables print the ratio reference time / rectok time.
#
# Results: printed, and with OUT set (the device tool's output folder), also in $OUT/gpu-check.log and
# $OUT/*.json. Record what it printed in BENCHMARKS.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-}
shift || true

pack() {
    local split=0
    if [ "${1:-}" = "--split" ]; then
        split=1
        shift
    fi
    local pack=${1:-gpu-check.tar.zst}
    # Relative to where the command was given, not to the repository.
    [[ $pack = /* ]] || pack=$PWD/$pack
    local target=${CARGO_TARGET_DIR:-$here/target-vulkan}
    cd "$here"
    echo "building the Vulkan binaries in $target (the first build takes ~15 min on 2 cores)"
    CARGO_TARGET_DIR=$target cargo build --release --features vulkan --bin rectok
    local golden
    golden=$(CARGO_TARGET_DIR=$target cargo test --release --features vulkan --test golden --no-run \
        --message-format=json |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "golden" and m.get("executable"):
        print(m["executable"])')
    [ -x "$golden" ] || { echo "error: the golden test binary was not built" >&2; exit 1; }
    local stage
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' RETURN
    mkdir -p "$stage/gpu-check/bin" "$stage/gpu-check/lib" "$stage/gpu-check/benches"
    strip -o "$stage/gpu-check/bin/rectok" "$target/release/rectok"
    strip -o "$stage/gpu-check/bin/golden" "$golden"
    cp -r tests/golden "$stage/gpu-check/golden"
    cp benches/reference_*.py benches/bench_device.py "$stage/gpu-check/benches/"
    cp scripts/gpu-check.sh "$stage/gpu-check/"
    # The Vulkan loader, for a machine that has the NVIDIA driver but no loader.
    local loader
    loader=$(system_libs | awk '/libvulkan\.so\.1 /{print $NF}' | head -n 1 || true)
    if [ -n "$loader" ]; then
        cp -L "$loader" "$stage/gpu-check/lib/libvulkan.so.1"
    fi
    if [ $split = 1 ]; then
        local base=${pack%.tar.zst}
        write_pack "$stage" "$base-golden.tar.zst" gpu-check/bin/golden gpu-check/golden gpu-check/gpu-check.sh
        write_pack "$stage" "$base-bench.tar.zst" gpu-check/bin/rectok gpu-check/lib gpu-check/benches \
            gpu-check/gpu-check.sh
    else
        write_pack "$stage" "$pack" gpu-check
    fi
}

# write_pack STAGE PACK PATHS...: a zstd tar of PATHS (relative to STAGE), refused over 64 MiB.
write_pack() {
    local stage=$1 pack=$2
    shift 2
    tar -C "$stage" -cf - "$@" | zstd -q -19 --long=28 -T0 -o "$pack.partial" -f
    local size
    size=$(stat -c %s "$pack.partial")
    if [ "$size" -ge $((64 * 1024 * 1024)) ]; then
        rm -f "$pack.partial"
        echo "error: $pack would be $((size / 1024 / 1024)) MiB, over 64 MiB" >&2
        return 1
    fi
    mv "$pack.partial" "$pack"
    echo "packed $pack: $((size / 1024 / 1024)) MiB ($size bytes)"
}

# The dynamic linker's library list (empty where ldconfig is missing), read whole: a reader that
# stops early would kill ldconfig with SIGPIPE, which pipefail turns into a failure.
system_libs() {
    local libs
    libs=$( (/sbin/ldconfig -p || ldconfig -p) 2>/dev/null || true)
    printf '%s\n' "$libs"
}

run() {
    local tiny=0
    if [ "${1:-}" = "--tiny" ]; then
        tiny=1
        shift
    fi
    [ $# -gt 0 ] || set -- gpu-check.tar.zst
    local start=$SECONDS
    # Global, for the EXIT trap.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    local pack
    for pack in "$@"; do
        if [ ! -f "$pack" ] || [ ! -r "$pack" ]; then
            echo "error: $pack: no such pack (make one with \`scripts/gpu-check.sh pack\`)" >&2
            return 2
        fi
        if ! zstd -dc --long=28 "$pack" 2>/dev/null | tar -C "$work" -xf - 2>/dev/null; then
            echo "error: $pack: not a gpu-check pack (a zstd tar written by \`scripts/gpu-check.sh pack\`)" >&2
            return 2
        fi
    done
    local g=$work/gpu-check
    # The golden cases: packed, or the checkout's.
    local cases=$g/golden
    [ -d "$cases" ] || cases=$here/tests/golden
    local out=${OUT:-$work/out}
    mkdir -p "$out"
    exec > >(tee "$out/gpu-check.log") 2>&1

    # A Vulkan loader and driver: the system's, else the packed loader and the NVIDIA ICD where the
    # container runtime mounts it.
    if [[ $(system_libs) != *"libvulkan.so.1 "* ]]; then
        export LD_LIBRARY_PATH=$g/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
        /usr/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
            export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
        fi
    done
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    fi
    # A failing part is reported and the check goes on (a GPU lease is short); the exit status
    # says whether everything passed.
    local failed=()
    if [ -x "$g/bin/golden" ]; then
        echo "== golden parity on the GPU (RECTOK_GOLDEN_DEVICE=vulkan)"
        RECTOK_GOLDEN_DIR=$cases RECTOK_GOLDEN_DEVICE=vulkan "$g/bin/golden" || failed+=(golden)
        echo "(golden: $((SECONDS - start)) s so far)"
    fi
    local rectok=$g/bin/rectok
    if [ ! -x "$rectok" ]; then
        finish "$start" ${failed[@]+"${failed[@]}"}
        return
    fi
    local torch=0
    if [ -n "${RECTOK_REPO:-}" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        torch=1
        echo "PyTorch $(python3 -c 'import torch; print(torch.__version__)') with CUDA: timing the reference side by side"
    else
        echo "no PyTorch with CUDA and RECTOK_REPO: rectok alone (ratios need the reference)"
    fi
    local tok_model=rectok_b tok_batches=1,32 dit_models=xl dit_batches=1,32 sample=50 iters=3
    local train_recipes=rectok-b,ditdh-s train_batches=32
    if [ $tiny = 1 ]; then
        tok_model=tiny tok_batches=1,2 dit_models=s dit_batches=1 sample=3 iters=1
        train_recipes=tiny,ditdh-tiny train_batches=1
    fi
    for precision in f32 f16; do
        echo "== $precision"
        local ref_tok=() ref_dit=()
        if [ $torch = 1 ] && [ $tiny = 0 ]; then
            local rt=$out/reference_tokenizer_$precision.json rd=$out/reference_dit_$precision.json
            if python3 "$g/benches/reference_tokenizer.py" --rectok-repo "$RECTOK_REPO" --device cuda \
                --precision $precision --batch-sizes $tok_batches -o "$rt"; then
                ref_tok=(--reference "$rt")
            else
                failed+=("PyTorch tokenizer $precision")
            fi
            if python3 "$g/benches/reference_dit.py" --rectok-repo "$RECTOK_REPO" --device cuda \
                --precision $precision --models $dit_models --batch-sizes $dit_batches -o "$rd"; then
                ref_dit=(--reference "$rd")
            else
                failed+=("PyTorch DiT $precision")
            fi
        fi
        "$rectok" bench tokenizer --device vulkan --precision $precision --model $tok_model \
            --batch-sizes $tok_batches --iters $iters ${ref_tok[@]+"${ref_tok[@]}"} \
            --json "$out/tokenizer_$precision.json" || failed+=("tokenizer $precision")
        "$rectok" bench dit --device vulkan --precision $precision --models $dit_models \
            --batch-sizes $dit_batches --sample-steps $sample --iters $iters ${ref_dit[@]+"${ref_dit[@]}"} \
            --json "$out/dit_$precision.json" || failed+=("dit $precision")
        "$rectok" bench train --device vulkan --precision $precision --recipes $train_recipes \
            --batch-sizes $train_batches --iters $iters --json "$out/train_$precision.json" ||
            failed+=("train $precision")
        echo "($precision done: $((SECONDS - start)) s so far)"
    done
    finish "$start" ${failed[@]+"${failed[@]}"}
}

# finish START [FAILED...]: the closing line; fails when a part failed.
finish() {
    local start=$1
    shift
    if [ $# -gt 0 ]; then
        echo "gpu-check finished in $((SECONDS - start)) s; FAILED: $*"
        return 1
    fi
    echo "gpu-check finished in $((SECONDS - start)) s; every part passed"
}

case $mode in
    pack) pack "$@" ;;
    run) run "$@" ;;
    *)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
