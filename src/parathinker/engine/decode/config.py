"""How decode steps run: the attention backend and the switches of the fast paths (the CLI is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError

ATTENTION = ("auto", "triton", "cascade", "reference")


@dataclass
class DecodeConfig:
    """Decode steps: attention backend, CUDA graphs, the fused step, packed CPU weights, overlap, the prefill thread."""

    attention: str = field(
        default="auto",
        metadata={"help": "decode attention: auto (triton on CUDA, cascade elsewhere), triton, cascade (torch: shared prompt read once per request), reference (explicit mask)"},
    )
    cuda_graphs: bool = field(
        default=True,
        metadata={"help": "capture decode steps in CUDA graphs, one per batch bucket (CUDA + triton attention only)"},
    )
    fused_decode: bool = field(
        default=True,
        metadata={"help": "decode steps through fused q|k|v and gate|up GEMMs and fused norm/RoPE/KV-write/SiLU/merge "
                  "kernels (Triton with triton attention, torch twins otherwise); off: the model's modular forward"},
    )
    packed_weights: bool = field(
        default=True,
        metadata={"help": "CPU: the fused decode step's GEMMs and the LM head run over a copy of the weights packed "
                  "once for oneDNN (8 rows cost about what 1 does); skipped when the copy would take more than "
                  "a quarter of the free memory"},
    )
    overlap: bool = field(
        default=True,
        metadata={"help": "CUDA: launch decode step n+1 before reading step n's tokens on the host, so the host's "
                  "bookkeeping runs while the GPU computes (same tokens; no effect on the CPU)"},
    )
    prefill_thread: bool = field(
        default=True,
        metadata={"help": "CPU: prefill newly admitted prompts on a second thread while the running requests decode "
                  "(the new requests join the next step); used only when torch's threads leave a core free"},
    )
    max_graph_batch: int = field(
        default=256, metadata={"help": "largest decode batch run through a CUDA graph (larger ones run eagerly)"}
    )
    reference_prefill: bool = field(
        default=False,
        metadata={"cli": False, "help": "tests: multi-token chunks through the explicit-mask reference instead of "
                  "SDPA's causal modes (the oracle the causal prefill is compared with)"},
    )

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION:
            raise ConfigError(f"attention must be auto, triton, cascade or reference, got {self.attention!r}")
        if self.max_graph_batch < 1:
            raise ConfigError(f"max_graph_batch must be >= 1, got {self.max_graph_batch}")
