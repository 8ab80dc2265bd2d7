#!/usr/bin/env bash
# One-GPU check for maintainers: under 5 minutes, no downloads (random weights, the embedded
# tokenizer). Prints one table: the tiny pipeline in bf16 and with QLoRA, LoRA SFT tokens/s and
# MFU for SmolLM2-135M, 1B and 8B (QLoRA) shapes, one DPO step, vLLM generation when installed.
# Needs the gpu extra for QLoRA: pip install -e '.[gpu]'.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 "$PYTHON" bench/gpu_check.py "$@"
