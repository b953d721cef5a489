#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the GPU paths' correctness tests, then step time and MFU of
# the GPT-2 124M shape (12 x 768, context 1024, vocabulary 50304) in bfloat16 for each attention
# implementation, and float32 for reference. Figures are JSON lines on stdout, the rows not yet
# measured on a GPU first (so a run cut short still reports them); the whole default run should
# fit one 10-minute device call.
#
#     bash benchmarks/gpu_suite.sh            # PYTHON=... to choose the interpreter
#     ALL=1 bash benchmarks/gpu_suite.sh      # also the xla, einsum and float32 reference rows
#     SIZE=tiny JAX_PLATFORMS=cpu bash benchmarks/gpu_suite.sh   # a dry run of the script here
#
# On the lent GPU machine, whose image lacks some of llmjax's packages: first
# `bash benchmarks/gpu_wheels.sh` here, then run this there with .whl carried (it installs
# them). The JSON lines also go to $OUT/gpu_suite.jsonl, the closing profile to
# $OUT/gpu_profile.txt, when $OUT is set (the device tool sets it).
set -u
PY=${PYTHON:-python3}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/llmjax-site .whl/*.whl || exit 1
  export PYTHONPATH=$PYTHONPATH:/tmp/llmjax-site
fi
RESULTS=${OUT:-/tmp}/gpu_suite.jsonl
# float32 references at full precision (XLA may otherwise use TF32 for float32 matmuls)
JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m pytest -q -p no:cacheprovider \
    tests/test_attention_impl.py tests/test_blockwise_attention.py tests/test_models.py \
    tests/test_encoder_decoder.py tests/test_matmul_outputs.py
step_time() {  # the GPT-2 124M shape in benchmarks/step_time.py, with more flags
  timeout 240 $PY benchmarks/step_time.py --config=configs/gpt.py:size="${SIZE:-base}" \
      --vocab_size=50304 --peak_size=8192 "$@" 2>&1
}
run() {  # dtype attention_impl batch [float32_matmul_outputs [logits_chunks]]
  step_time --config.model.dtype="$1" --config.model.attention_impl="$2" \
      --config.batch_size="$3" --config.model.float32_matmul_outputs="${4:-True}" \
      --config.model.logits_chunks="${5:-1}" --steps=20 | grep '^{' ||
      echo "{\"failed\": \"$1 $2 batch $3 float32_matmul_outputs ${4:-True} logits_chunks ${5:-1}\"}"
}
{
  run bfloat16 cudnn 32 False 4  # the loss a quarter of the sequence at a time: not yet on a GPU
  run bfloat16 cudnn 32 False
  run bfloat16 cudnn 64 False
  run bfloat16 cudnn 64
  run bfloat16 cudnn 32
  run bfloat16 cudnn 16
  run bfloat16 blockwise 16  # the JAX-level tiles against cuDNN's kernel: not yet on a GPU
  if [ "${ALL:-0}" = 1 ]; then  # the reference rows, measured in README (~1 minute each)
    run bfloat16 xla 16
    run bfloat16 einsum 16
    run float32 einsum 16
  fi
} | tee -a "$RESULTS"
# where the bfloat16 step's device time goes (the ops that take the most), for the next lever
step_time --config.model.dtype=bfloat16 --config.model.attention_impl=cudnn \
    --config.batch_size=32 --steps=5 --profile_steps=3 |
    grep -A40 '^device time' | tee "${OUT:-/tmp}/gpu_profile.txt"
