"""GPU memory per BentoCloud GPU type, and bytes per weight, for the catalog's GPU-fit check."""

from __future__ import annotations

from dataclasses import dataclass

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


# How much of the GPU budget must stay free of weights and of one full sequence's KV cache
# (activations, CUDA graphs, the rest of the KV cache).
KV_CACHE_RESERVE = 0.10
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class Fit:
    """The GPU-fit numbers of one model on `gpus` x `gpu_type`, in GB (10^9 bytes)."""

    weights_gb: float
    kv_gb: float | None  # KV cache of one full max_model_len sequence; None when unknown
    max_model_len: int | None
    gpus: int
    gpu_type: str
    utilization: float

    @property
    def budget_gb(self) -> float:
        return self.utilization * self.gpus * GPU_MEMORY_GB[self.gpu_type]

    @property
    def usable_gb(self) -> float:
        """What weights and one sequence's KV cache may take: the budget less the reserve."""
        return self.budget_gb * (1 - KV_CACHE_RESERVE)

    @property
    def needed_gb(self) -> float:
        return self.weights_gb + (self.kv_gb or 0.0)

    @property
    def fits(self) -> bool:
        return self.needed_gb <= self.usable_gb

    @property
    def kv_tokens(self) -> int | None:
        """Tokens of KV cache left in the budget after the weights (all sequences together)."""
        if not self.kv_gb or not self.max_model_len:
            return None
        per_token_gb = self.kv_gb / self.max_model_len
        return max(0, int((self.usable_gb - self.weights_gb) / per_token_gb))

    def explain(self) -> str:
        """`weights [+ KV] = needed <=|> 90% of util x memory on N x type (usable)`, one line."""
        need = f"{self.weights_gb:.1f} GB of weights"
        if self.kv_gb is not None:
            need += f" + {self.kv_gb:.1f} GB KV cache of one {self.max_model_len}-token sequence = {self.needed_gb:.1f} GB"
        sign = "<=" if self.fits else ">"
        total = self.gpus * GPU_MEMORY_GB[self.gpu_type]
        return (
            f"{need} {sign} {1 - KV_CACHE_RESERVE:.0%} of {self.utilization} x {total} GB "
            f"on {self.gpus} x {self.gpu_type} ({self.usable_gb:.1f} GB)"
        )


def gpu_fit(
    params_billion: float,
    gpu_type: str,
    gpus: int = 1,
    *,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_bytes_per_token: int | None = None,
    max_model_len: int | None = None,
    utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
) -> Fit:
    """The numbers of the catalog's fit check, also used by `make new` and the model READMEs."""
    weights_gb = params_billion * weight_bytes_per_param(dtype, quantization)
    kv_gb = kv_bytes_per_token * max_model_len / 1e9 if kv_bytes_per_token and max_model_len else None
    return Fit(weights_gb, kv_gb, max_model_len if kv_gb is not None else None, gpus, gpu_type, utilization)


# The GPU types `make new` chooses from, in BentoCloud's current offer; duplicates
# (nvidia-tesla-h100) and legacy types (K80, P4, P100, V100) are left out, as is AMD
# (the generated requirements install vLLM's CUDA build).
CANDIDATE_GPUS = (
    "nvidia-tesla-t4", "nvidia-l4", "nvidia-a10g", "nvidia-tesla-a100", "nvidia-a100-80gb",
    "nvidia-h100-80gb", "nvidia-rtx-pro-6000", "nvidia-h200-141gb", "nvidia-b200",
)
GPU_COUNTS = (1, 2, 4, 8)
# Before Ampere: no bfloat16, and no Marlin kernels for 4-bit weights.
PRE_AMPERE = {"nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-k80", "nvidia-tesla-p4"}
MARLIN = {"awq": "awq_marlin", "gptq": "gptq_marlin"}


def engine_quantization(method: str | None, gpu_type: str | None) -> str | None:
    """The `quantization` flag for a checkpoint's method on a GPU type (Marlin kernels from Ampere on)."""
    if method in MARLIN and gpu_type is not None and gpu_type not in PRE_AMPERE:
        return MARLIN[method]
    return method


def gpu_problem(gpu_type: str, gpus: int, dtype: str, heads: int, kv_heads: int) -> str | None:
    """Why `gpus` x `gpu_type` cannot run the model at all, whatever its size; None if it can."""
    if dtype == "bfloat16" and gpu_type in PRE_AMPERE:
        return f"{gpu_type} has no bfloat16"
    if heads % gpus or (kv_heads % gpus and gpus % kv_heads):
        return f"tensor parallel size {gpus} does not divide {heads} attention heads ({kv_heads} KV heads)"
    return None


def gpu_options() -> list[tuple[str, int]]:
    """(type, count) from the least total memory up; on a tie, fewer GPUs first."""
    options = [(gpu_type, n) for n in GPU_COUNTS for gpu_type in CANDIDATE_GPUS]
    return sorted(options, key=lambda o: (GPU_MEMORY_GB[o[0]] * o[1], o[1]))


def smallest_fit(params_billion: float, *, dtype: str, quantization: str | None, kv_bytes_per_token: int,
                 max_model_len: int, heads: int, kv_heads: int) -> tuple[Fit | None, list[str]]:
    """The first GPU option where weights and one full sequence fit, and why each smaller one did not."""
    passed_over: list[str] = []
    for gpu_type, gpus in gpu_options():
        if problem := gpu_problem(gpu_type, gpus, dtype, heads, kv_heads):
            passed_over.append(f"{gpus} x {gpu_type}: {problem}")
            continue
        fit = gpu_fit(params_billion, gpu_type, gpus, dtype=dtype, quantization=quantization,
                      kv_bytes_per_token=kv_bytes_per_token, max_model_len=max_model_len)
        if fit.fits:
            return fit, passed_over
        passed_over.append(fit.explain())
    return None, passed_over
