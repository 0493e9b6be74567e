"""The KV page pool tensor (one allocation, owned by the runner), its sizing and its growth."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, OutOfPagesError
from ..model import ModelConfig
from .decode.cpu_gemm import available_memory

# CPU default (no budget given): the pool starts small and grows when the queued requests need more
# pages (engine.Engine._fit_pool), so a small model or a short request takes what it needs (the
# bundled 3M-parameter model: a few MiB where a fixed default took 2 GiB, ~1 s of start-up and 2 GB
# of RSS). It grows for the queue up to what CPU_POOL_CONTEXTS full-context sequences need (at most
# CPU_POOL_MAX_GIB; past that, requests wait for pages as with a fixed pool), and for one request
# that needs more up to CPU_POOL_MEMORY_SHARE of the memory that was free when the engine started.
CPU_POOL_INITIAL_PAGES = 64
CPU_POOL_CONTEXTS = 64
CPU_POOL_MAX_GIB = 2
CPU_POOL_MEMORY_SHARE = 0.5
GROWTH = 1.5  # a growing pool takes at least this factor more pages: the copies add up to a constant per page


@dataclass
class CacheConfig:
    """KV memory: one preallocated pool of pages, sized from a memory budget (how decode steps run: ``DecodeConfig``)."""

    page_size: int = field(default=16, metadata={"help": "tokens per KV page"})
    kv_cache_memory: float | None = field(
        default=None,
        metadata={"help": "GiB for the KV pool (a fixed size)",
                  "default_text": "on CPU a pool that starts small and grows as requests need it; "
                  "on CUDA 85%% of free memory"},
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
    """``data``: (layers, 2, num_pages * page_size, kv_heads, head_dim); slot = page * page_size + offset.

    A fixed pool (a budget or a page count given, or CUDA) has ``max_pages == num_pages``; a growable
    one (CPU, nothing given) starts at ``num_pages`` and ``grow`` enlarges it up to ``max_pages``,
    never above ``queue_pages`` for requests that merely wait (see the module constants).
    """

    def __init__(self, cfg: ModelConfig, cache: CacheConfig, dtype: torch.dtype, device: torch.device):
        self.page_size = cache.page_size
        self.device, self.dtype = device, dtype
        elem = torch.empty((), dtype=dtype).element_size()
        self.page_bytes = page_bytes = cfg.kv_bytes_per_token * cache.page_size * elem
        self._shape = (cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim)
        self.growable = cache.num_pages is None and cache.kv_cache_memory is None and device.type != "cuda"
        if self.growable:
            context = cfg.kv_bytes_per_token * elem * cfg.max_position_embeddings
            queue = max(2, int(min(CPU_POOL_MAX_GIB * 2**30, CPU_POOL_CONTEXTS * context) // page_bytes))
            free = available_memory()
            self.max_pages = max(2, int(CPU_POOL_MEMORY_SHARE * free // page_bytes)) if free else queue
            self.queue_pages = min(queue, self.max_pages)
            num_pages = min(CPU_POOL_INITIAL_PAGES, self.queue_pages)
        else:
            if cache.num_pages is not None:
                num_pages = cache.num_pages
            elif cache.kv_cache_memory:
                num_pages = int(cache.kv_cache_memory * 2**30 // page_bytes)
            else:  # CUDA
                free, _ = torch.cuda.mem_get_info(device)
                num_pages = int(0.85 * free // page_bytes)
            if num_pages < 2:
                raise OutOfPagesError(
                    f"the KV budget holds {num_pages} pages of {page_bytes} bytes: raise kv_cache_memory (GiB)"
                )
            self.max_pages = self.queue_pages = num_pages
        self.num_pages = num_pages
        self.data = self._alloc(num_pages)

    def _alloc(self, num_pages: int) -> torch.Tensor:
        L, two, KVH, hd = self._shape
        try:
            return torch.zeros(L, two, num_pages * self.page_size, KVH, hd, dtype=self.dtype, device=self.device)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            raise OutOfPagesError(
                f"cannot allocate {num_pages * self.page_bytes / 2**30:.2f} GiB of KV pages on {self.device}: {e}; "
                "lower kv_cache_memory (GiB) or the token budgets"
            ) from None

    def grow(self, num_pages: int) -> torch.Tensor:
        """Enlarge a growable pool to ``num_pages`` (at most ``max_pages``); the pages it holds keep their
        slots and contents (copied into the new tensor). Returns the new ``data``."""
        assert self.growable and self.num_pages < num_pages <= self.max_pages, (self.num_pages, num_pages)
        new = self._alloc(num_pages)
        new[:, :, : self.data.shape[2]] = self.data
        self.data, self.num_pages = new, num_pages
        return new

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()
