#!/usr/bin/env bash
# The device check (zsqbench/perf/device_check.py): one JSON file of what a lent GPU measures.
#   bash benchmarks/device_check.sh --device cuda --json-out "$OUT/device_check.json" --logs "$OUT/logs"
#   bash benchmarks/device_check.sh --device cpu --quick --json-out X.json     (CI: the code paths, ~1 min)
# On a bare device machine (no zsqbench, no network) it first installs the wheels of
# benchmarks/device_wheels/ (bash benchmarks/fetch_device_wheels.sh, here) under a temporary folder on
# PYTHONPATH, without touching the machine's torch, and makes this checkout importable (an editable
# install with --no-deps, else PYTHONPATH). See benchmarks/README.md, "Device check".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import zsqbench.perf.device_check, zsqbench_plugins, pydantic, pytorchcv" 2>/dev/null; then
    site="${TMPDIR:-/tmp}/zsqbench-device-site"
    if compgen -G "benchmarks/device_wheels/*.whl" >/dev/null; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            benchmarks/device_wheels/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$PY" -c "import zsqbench_plugins" 2>/dev/null; then
        if ! "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
            # no editable install (old setuptools, read-only environment): the same modules by path
            mkdir -p "$site"
            ln -sfn "$PWD/plugins" "$site/zsqbench_plugins"
            export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
        fi
    fi
    "$PY" -c "import zsqbench.perf.device_check, zsqbench_plugins, pydantic, pytorchcv" \
        || { echo "device check: zsqbench is not importable (missing wheels? run benchmarks/fetch_device_wheels.sh here and carry benchmarks/device_wheels)" >&2; exit 2; }
fi
exec "$PY" -m zsqbench.perf.device_check "$@"
