#!/usr/bin/env bash
# What the GPU check (python -m bench.gpu) carries to the bare device machine, prepared here:
#   .gpu/base/      the default base model's config and tokenizer, without its weights
#   .gpu/wheels/    the locked packages the device image lacks (bench.gpu.carry_requirements):
#                   Python 3.12 x86-64 wheels; bitsandbytes with its CUDA 13 libraries only
# Then one device call, carrying .gpu (see docs/performance.md):
#   bash bench/gpu_carry.sh --install && PYTHONPATH=/tmp/site python3 -m bench.gpu --out $OUT/gpu.json
# --install (on the device machine): the carried wheels into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--install" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/wheels/*.whl
    exit
fi

grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || grep -qx '.gpu/' .gitignore \
    || echo '/.gpu/' >> .git/info/exclude
uv run python -m bench.gpu --prepare .gpu
rm -rf .gpu/wheels && mkdir -p .gpu/wheels
platforms=()
for n in 17 24 26 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # a binary wheel for the device's Python, else one built here (pure-Python sdists)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .gpu/wheels "$1" >/dev/null 2>&1 \
        || python3 -m pip wheel -q --no-deps -w .gpu/wheels "$1" >/dev/null 2>&1 \
        || { echo "gpu_carry: no wheel for $1" >&2; return 1; }
}
export -f download
export platforms_list="${platforms[*]}"
xargs -P 8 -I{} bash -c 'platforms=($platforms_list); download "$@"' _ {} < .gpu/requirements.txt
# bitsandbytes ships a library per CUDA version (43 MB): keep CUDA 13's (the image's torch is
# cu130), the CPU's and the Python code
python3 - <<'EOF'
import pathlib, re, zipfile
for wheel in pathlib.Path(".gpu/wheels").glob("bitsandbytes-*.whl"):
    slim = wheel.with_suffix(".slim")
    drop = re.compile(r"libbitsandbytes_(cuda1[01]\d|cuda12\d|rocm\w+)\.so$")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not drop.search(item.filename):
                data = src.read(item)
                if item.filename.endswith("/RECORD"):
                    data = b"\n".join(l for l in data.split(b"\n") if not drop.search(l.split(b",")[0].decode()))
                dst.writestr(item, data)
    slim.replace(wheel)
EOF
wheels=$(ls .gpu/wheels | wc -l)
wanted=$(grep -c . .gpu/requirements.txt)
[ "$wheels" = "$wanted" ] || { echo "gpu_carry: $wheels wheels for $wanted requirements" >&2; exit 1; }
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb .gpu | cut -f1)
echo "gpu_carry: $wheels wheels; .gpu $((carried / 1048576)) MiB + working tree $((tree / 1048576)) MiB (limit 64 MiB)"
[ $((carried + tree)) -lt $((64 * 1048576)) ] || { echo "gpu_carry: over the 64 MiB a call carries" >&2; exit 1; }
