#!/usr/bin/env bash
# Run here (with network), before a GPU session: downloads into .whl/ the wheels that llmjax
# needs and the lent GPU machine's image lacks (its python3 is 3.12 with jax 0.11.2, flax,
# optax, orbax, tokenizers, ... but no ml_collections, grain, tensorflow-datasets or
# tensorboardX, and it reaches no registry). benchmarks/gpu_suite.sh installs them from .whl/
# when the device tool carries it:
#
#     bash benchmarks/gpu_wheels.sh                  # ~11 MB in .whl/ (git ignores it)
#     run: command="bash benchmarks/gpu_suite.sh", carry=[".whl"]
#
# Checked on this CPU (session 21): a Python 3.12 venv holding only packages of that image
# (jax 0.11.2, flax 0.12.10, numpy 2.5.2, ...) plus these wheels installed with --no-deps
# passes the suite's tests and runs benchmarks/step_time.py. Versions: pyproject.toml's pins
# where it pins, else what pip resolved beside them.
set -eu
cd "$(dirname "$0")/.."
WHEELS=(array_record==0.8.6 dm-tree==0.1.10 docstring_parser==0.18.0
        googleapis-common-protos==1.76.0 grain==0.2.18 immutabledict==4.3.1
        importlib_resources==7.1.0 ml_collections==1.1.0 portpicker==1.6.0
        simple-parsing==0.1.9 tensorboardX==2.6.5 tensorflow-datasets==4.9.10
        tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# promise (tensorflow-datasets needs it) is published as source only: pure Python, built here
python3 -m pip wheel -q --no-deps -w .whl promise==2.3
ls .whl
