#!/usr/bin/env bash
# Everything the README leaves to a GPU, in one run (within 8 min on one GPU) that writes one JSON:
# ResNet-50 224 px GLCNet images/s at bf16 with and without torch.compile, its fraction of the
# device's peak, the views + matching share and time split of a step, peak memory, NT-Xent at
# N = 4096, and the ratio to the peer composition (with the extra 'peers' installed).
#
#   bash benchmarks/gpu.sh                        # -> benchmarks/results/gpu.json
#   bash benchmarks/gpu.sh --tiny --device cpu    # the smoke size, any machine (about a minute)
#
# Needs the package installed (pip install -e ".[peers]" for the peer stage). Every option of
# benchmarks/gpu.py passes through (--batch, --workers, --skip STAGE, --out FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import contrastseg, kornia, torch" 2>/dev/null || {
    echo "benchmarks/gpu.sh: contrastseg, kornia or torch does not import with $PYTHON;" \
         "install the package first: pip install -e '.[peers]'" >&2
    exit 2
}
exec "$PYTHON" benchmarks/gpu.py "$@"
