"""Training hyper-parameters. Defaults follow the paper (PARATHINKER.md, "Training"); each is a flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Optimisation, batching, checkpointing and distribution settings of `parathinker train`."""

    learning_rate: float = field(default=1e-5, metadata={"flag": "--lr", "help": "peak learning rate"})
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"help": "any transformers scheduler name"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (norms and biases exempt)"})
    max_grad_norm: float = field(default=0.5, metadata={"flag": "--grad-clip", "help": "gradient clipping norm"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the data"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: use --epochs)"})
    stop_step: int = field(
        default=0,
        metadata={"help": "end training after this many steps of a --max-steps schedule (0: run it to the end); "
                          "the model is saved there, as a reproducible early stop"},
    )
    per_device_batch_size: int = field(default=1, metadata={"help": "examples per device per micro-step"})
    global_batch_size: int = field(
        default=64, metadata={"help": "examples per optimizer step over all devices (sets gradient accumulation)"}
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on when the GPU has it)"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "recompute activations in the backward"})
    attn_impl: Literal["auto", "dense", "flex"] = field(
        default="auto",
        metadata={"help": "attention: dense [B,1,T,T] mask (SDPA) or FlexAttention block mask; auto = flex on CUDA, dense on CPU"},
    )
    loss_chunk_size: int = field(
        default=2048, metadata={"help": "label tokens per chunk of the LM head + loss (bounds memory); 0 = full [B,T,V] logits"}
    )
    save_steps: int = field(default=500, metadata={"help": "save an HF-format checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=None, metadata={"help": "keep only the newest N checkpoints"})
    logging_steps: int = field(default=1, metadata={"help": "log loss every N optimizer steps"})
    seed: int = field(default=42, metadata={"help": "seed of the data order, the path draws and the init"})
    num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    report_to: Literal["none", "tensorboard"] = field(default="none", metadata={"help": "none | tensorboard"})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config (e.g. configs/deepspeed_zero3.json)"})
    fsdp: str = field(default="", metadata={"help": "FSDP mode for transformers, e.g. 'full_shard auto_wrap'"})
    fsdp_config: str | None = field(default=None, metadata={"help": "FSDP JSON config (e.g. configs/fsdp.json)"})

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"--grad-clip must be > 0, got {self.max_grad_norm}")
        if self.per_device_batch_size < 1 or self.global_batch_size < 1:
            raise ConfigError("--per-device-batch-size and --global-batch-size must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("give --epochs > 0 or --max-steps > 0")
        if self.stop_step < 0 or (self.stop_step and self.max_steps > 0 and self.stop_step > self.max_steps):
            raise ConfigError(f"--stop-step must be in 0..--max-steps ({self.max_steps}), got {self.stop_step}")
        if self.loss_chunk_size < 0:
            raise ConfigError(f"--loss-chunk-size must be >= 0 (0 = full logits), got {self.loss_chunk_size}")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ConfigError("--save-steps and --logging-steps must be >= 1")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps that make ``global_batch_size`` from the devices."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of "
                f"--per-device-batch-size {self.per_device_batch_size} x {world_size} processes"
            )
        return self.global_batch_size // per_step
