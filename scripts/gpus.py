"""GPU memory per BentoCloud GPU type, and bytes per weight, for the catalog's GPU-fit check."""

from __future__ import annotations

# Memory of one GPU in GB, keyed by the GPU types BentoML accepts in `resources.gpu_type`.
GPU_MEMORY_GB = {
    "nvidia-b200": 180,
    "nvidia-gb200": 186,
    "nvidia-rtx-pro-6000": 96,
    "nvidia-h200-141gb": 141,
    "nvidia-tesla-h100": 80,
    "nvidia-h100-80gb": 80,
    "nvidia-tesla-a100": 40,
    "nvidia-a100-80gb": 80,
    "nvidia-a10g": 24,
    "nvidia-l4": 24,
    "nvidia-tesla-t4": 16,
    "nvidia-tesla-v100": 16,
    "nvidia-tesla-p100": 16,
    "nvidia-tesla-k80": 12,
    "nvidia-tesla-p4": 8,
    "amd-mi300x": 192,
    "amd-mi325x": 256,
    "amd-mi355x": 288,
}

DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

# 4-bit weights plus their scales and the layers left unquantized (embeddings, lm_head).
FOUR_BIT_BYTES = 0.5625
QUANTIZATION_BYTES = {
    **dict.fromkeys(("awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "moe_wna16"), FOUR_BIT_BYTES),
    **dict.fromkeys(("fp8", "fbgemm_fp8", "modelopt", "experts_int8", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel"), 1.0),
    **dict.fromkeys(("mxfp4", "modelopt_fp4", "nvfp4_per_token"), FOUR_BIT_BYTES),
}


def weight_bytes_per_param(dtype: str, quantization: str | None) -> float:
    """Bytes one parameter takes in GPU memory; unknown quantizations count as unquantized."""
    if quantization in QUANTIZATION_BYTES:
        return QUANTIZATION_BYTES[quantization]
    return DTYPE_BYTES.get(dtype, 2)
