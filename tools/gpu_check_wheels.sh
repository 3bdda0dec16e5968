#!/usr/bin/env bash
# Download the wheels tools/gpu_check.sh installs on a lent GPU machine, which has no package index.
#
#   tools/gpu_check_wheels.sh [DIR]      (default ./.whl, git-ignored; about 21 MB)
#
# Only what the GPU image lacks or has in another version than vltool pins (see
# /work/.library/device/KINDS.md for the image's packages): mmengine and its small pure-Python
# dependencies, bitsandbytes, and transformers/tokenizers/peft at vltool's versions. Binary wheels
# for CPython 3.12 on x86-64 Linux, whatever this machine is; no dependencies are resolved.
# bitsandbytes ships 43 MB of kernels for every CUDA, ROCm and XPU version; the copy kept holds
# the CPU library and the CUDA ones named by BNB_KEEP (default cuda13: the image's torch is cu130),
# so the working tree plus wheels stays under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-python3}
packages=(
    mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 platformdirs==4.14.9
    transformers==5.23.0 tokenizers==0.23.3 peft==0.21.2 bitsandbytes==0.50.2
)
platforms=()
for platform in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${platform}_x86_64")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "${packages[@]}"
"$python" - "$dest" "${BNB_KEEP:-cuda13}" <<'PY'
"""Rewrite the bitsandbytes wheel without the kernels of other accelerators, and its RECORD to match."""
import re
import sys
import zipfile
from pathlib import Path

folder, keep = Path(sys.argv[1]), sys.argv[2]
wanted = re.compile(rf"bitsandbytes/libbitsandbytes_(cpu|{re.escape(keep)}\w*)\.so$")
for wheel in folder.glob("bitsandbytes-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        dropped = {
            name for name in source.namelist() if name.startswith("bitsandbytes/libbitsandbytes_") and not wanted.search(name)
        }
        for item in source.infolist():
            if item.filename in dropped:
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",")[0] not in dropped).encode()
            target.writestr(item, data)
    slim.replace(wheel)
    print(f"{wheel.name}: kept the CPU and {keep}* kernels, dropped {len(dropped)} others")
PY
du -sh "$dest"
