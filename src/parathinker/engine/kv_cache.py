"""The KV page pool tensor (one allocation, owned by the runner) and its sizing."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, OutOfPagesError
from ..model import ModelConfig

# CPU default pool: room for this many sequences of the model's full context (e.g. 8 requests of
# 8 paths each reaching the context), capped. A small model then gets a small pool (the bundled
# 3M-parameter model: 256 MiB instead of 2 GiB, which cost ~1 s of start-up and 2 GB of RSS); a
# request that needs more than the pool fails at once with "raise --kv-cache-memory".
CPU_POOL_CONTEXTS = 64
CPU_POOL_MAX_GIB = 2


@dataclass
class CacheConfig:
    """KV memory: one preallocated pool of pages, sized from a memory budget (how decode steps run: ``DecodeConfig``)."""

    page_size: int = field(default=16, metadata={"help": "tokens per KV page"})
    kv_cache_memory: float | None = field(
        default=None,
        metadata={"help": "GiB for the KV pool",
                  "default_text": f"on CPU what {CPU_POOL_CONTEXTS} full-context sequences need, at most "
                  f"{CPU_POOL_MAX_GIB} GiB; on CUDA 85%% of free memory"},
    )
    num_pages: int | None = field(default=None, metadata={"help": "exact page count (overrides the budget)"})

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ConfigError(f"page_size must be >= 1, got {self.page_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ConfigError(f"kv_cache_memory must be > 0 GiB, got {self.kv_cache_memory}")
        if self.num_pages is not None and self.num_pages < 2:
            raise ConfigError(f"num_pages must be >= 2, got {self.num_pages}")


class KVCache:
    """``data``: (layers, 2, num_pages * page_size, kv_heads, head_dim); slot = page * page_size + offset."""

    def __init__(self, cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device):
        self.page_size = cache.page_size
        elem = torch.empty((), dtype=dtype).element_size()
        page_bytes = cfg.kv_bytes_per_token * cache.page_size * elem
        if cache.num_pages is not None:
            num_pages = cache.num_pages
        else:
            budget = cache.kv_cache_memory * 2**30 if cache.kv_cache_memory else default_budget(
                device, cfg.kv_bytes_per_token * elem * cfg.max_position_embeddings
            )
            num_pages = int(budget // page_bytes)
        if num_pages < 2:
            raise OutOfPagesError(
                f"the KV budget holds {num_pages} pages of {page_bytes} bytes: raise --kv-cache-memory"
            )
        self.num_pages = num_pages
        try:
            self.data = torch.zeros(
                cfg.num_layers, 2, num_pages * cache.page_size, cfg.num_kv_heads, cfg.head_dim,
                dtype=dtype, device=device,
            )
        except (torch.OutOfMemoryError, RuntimeError) as e:
            raise OutOfPagesError(
                f"cannot allocate {num_pages * page_bytes / 2**30:.2f} GiB of KV pages on {device}: {e}; "
                "lower --kv-cache-memory"
            ) from None

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def default_budget(device: torch.device, context_bytes: int) -> float:
    """Bytes of the pool when no budget is given: 85% of free memory on CUDA; on the CPU room for
    ``CPU_POOL_CONTEXTS`` sequences of ``context_bytes`` (one full context's K and V), capped."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.85 * free
    return min(CPU_POOL_MAX_GIB * 2**30, CPU_POOL_CONTEXTS * context_bytes)
