#!/usr/bin/env bash
# Fill .whl/ (gitignored) with what bench/gpu/check.sh installs on the GPU machine, which has
# torch, lightning, transformers, peft, accelerate, pandas and pyarrow but no registry access.
#
#   bash bench/gpu/fetch_wheels.sh          # here, where pip reaches the registry
#   PYTHON_VERSION=3.12 (default: the GPU image's python3) and PIP=... to override
#   EXTRA="pyarrow fsspec" bash bench/gpu/fetch_wheels.sh   # also carry these (lock versions),
#                               # e.g. when the image's copy is too old for datasets
#
# Wheels: the packages panacea_pl, its tests and the benches import that the GPU image lacks,
# at requirements/lock.txt's versions, linux x86_64, --no-deps (the list is the dependency
# closure minus what the image has). Also copies the two data samples the `gpu` tests read
# (PKU-SafeRLHF sample, stories260K) into .whl/data/. Prints the folder's size (the carried
# tree is limited to 64 MiB).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="${WHEEL_DIR:-$ROOT/.whl}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PIP="${PIP:-$ROOT/.venv/bin/python -m pip}"
[ -x "${PIP%% *}" ] || PIP="python3 -m pip"
DATA_DIR="${PANACEA_DATA_DIR:-$ROOT/../shared/data}"
PACKAGES=(
  # the package's own needs missing from the image
  datasets dill multiprocess jsonargparse docstring_parser typeshed_client omegaconf
  moocore cffi pycparser platformdirs typing_extensions
  # wandb (imported by panacea_pl.loggers) and what `import wandb` pulls in
  wandb pydantic pydantic_core annotated-types typing-inspection googleapis-common-protos
  opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-proto
  opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
  opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common
  # the DPO bench's peer
  trl
)
# shellcheck disable=SC2206
PACKAGES+=(${EXTRA:-})
pin() {  # NAME -> NAME==VERSION from the lock (names compared case- and -/_-insensitively)
  local want; want="$(echo "$1" | tr 'A-Z_' 'a-z-')"
  local line; line="$(tr 'A-Z_' 'a-z-' <"$ROOT/requirements/lock.txt" | grep -E "^${want}==" || true)"
  [ -n "$line" ] || { echo "fetch_wheels: $1 is not in requirements/lock.txt" >&2; exit 1; }
  echo "$line"
}
mkdir -p "$DEST"
SPECS=()
for p in "${PACKAGES[@]}"; do SPECS+=("$(pin "$p")"); done
PLATFORMS=()
for n in 2_17 2_27 2_28 2_31 2_34; do PLATFORMS+=(--platform "manylinux_${n}_x86_64"); done
$PIP download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" "${PLATFORMS[@]}" --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" "${SPECS[@]}"
for sample in pku-saferlhf-sample-500 tinyllamas-stories260k; do
  if [ -d "$DATA_DIR/$sample" ]; then
    mkdir -p "$DEST/data" && cp -r "$DATA_DIR/$sample" "$DEST/data/"
  else
    echo "fetch_wheels: $DATA_DIR/$sample not found: the gpu tests will not find their data" >&2
  fi
done
echo "$(ls "$DEST"/*.whl | wc -l) wheels; $DEST holds $(du -sh "$DEST" | cut -f1) (limit: 64 MiB for the whole carried tree)"
