#!/usr/bin/env bash
# Install everything mbgen needs on Debian/Ubuntu, then run the main job: compile
# mbv1_0.25_128 for Cortex-M7 (with the trained weights in ../shared when present) and run it in
# QEMU on a photo (skip that with --no-demo).
set -euo pipefail
cd "$(dirname "$0")"

run_demo=1
[ "${1:-}" = "--no-demo" ] && run_demo=0

# Cortex-M toolchain, C library and emulator (Debian packages), only when missing.
missing=()
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi)
dpkg -s libnewlib-arm-none-eabi >/dev/null 2>&1 || missing+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v cc >/dev/null || missing+=(gcc)
# make and cmake: `mbgen compile --board` folders come with a Makefile and a CMakeLists.txt.
command -v make >/dev/null || missing+=(make)
command -v cmake >/dev/null || missing+=(cmake)
# clang: the generated folders are checked warnings-free with both host compilers.
command -v clang >/dev/null || missing+=(clang)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# mbgen itself with its Python dependencies (torch is pinned to the CPU build 2.13.0).
python3 -m pip install -q --disable-pip-version-check -e '.[test,tflite]'
# pyenv installs console scripts behind shims that only appear after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi

if [ $run_demo -eq 1 ]; then
    shared=../shared
    if [ -f $shared/models/mobilenet_v1_0.25_128.tflite ] && [ -d $shared/calib ]; then
        # The trained MobileNet V1 0.25/128 (TF's float weights), calibrated on real photos,
        # classifies a photo of a cat in QEMU: "Egyptian cat" first.
        mbgen compile mbv1_0.25_128 --weights $shared/models/mobilenet_v1_0.25_128.tflite \
            --calib $shared/calib --target cortex-m7 -o out/mbv1_0.25_128-cortex-m7
        mbgen run out/mbv1_0.25_128-cortex-m7 --image $shared/images/cat.bmp \
            --labels $shared/models/imagenet_labels.txt
    else
        echo "setup: $shared/models not found; running the zoo model's seeded weights instead"
        mbgen compile mbv1_0.25_128 --target cortex-m7 -o out/mbv1_0.25_128-cortex-m7
        mbgen run out/mbv1_0.25_128-cortex-m7 --qemu
    fi
fi
