"""`parathinker train`: multi-path SFT on transformers' Trainer.

The Trainer owns the loop, distribution (DDP via torchrun/accelerate, FSDP, DeepSpeed ZeRO-3),
mixed precision, gradient accumulation, clipping, scheduling, checkpoint rotation and resume.
This module adds what our model needs and a stock Trainer cannot know:

- the loss: cross entropy against *already aligned* labels (``layout.pack`` makes ``labels[k]``
  the target of position ``k``; no shift), summed and divided by the label tokens of the whole
  optimizer step over all processes (Trainer's ``num_items_in_batch``), so 1 and N processes,
  and any accumulation, give the same loss and gradients for the same global batch; computed
  inside the model's forward (``modeling.TrainingModel``), from the hidden states in chunks
  (``--loss-chunk-size``), never as [B, T, V] logits;
- the mask: built on the device from the batch's per-token ``kinds`` inside the forward, either a
  dense [B, 1, T, T] additive mask (``--attn-impl dense``, CPU default) or a FlexAttention block
  mask (``--attn-impl flex``, CUDA default); nothing T x T goes through the data loader;
- saving: every checkpoint, and the final model, is a Hugging Face-format ParaThinker checkpoint
  (``parathinker.model.save_model`` + tokenizer), loadable by the engine and by ``--model``;
- truncation counters and trained-token counts in the logs; a metrics JSONL; loss in the bar.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from ..errors import CheckpointError, ConfigError
from ..layout import IGNORE_INDEX
from .collate import STATS, Collator, EpochSampler, MultiPathDataset, PackConfig, batch_bias
from .config import TrainConfig
from .loss import token_ce  # noqa: F401 - re-exported: the loss's one definition
from .modeling import TrainingModel, resolve_attn_impl

log = logging.getLogger(__name__)

CARRIED_FILES = ("parathinker.json", "generation_config.json")  # copied from --model into every checkpoint


@torch.no_grad()
def token_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    """Log-prob of each label under ``model`` exactly as training computes it: ``[B, T]``, NaN where no label."""
    bias = batch["attn_bias"] if "attn_bias" in batch else batch_bias(batch["kinds"])
    logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"], attn_bias=bias)
    labels = batch["labels"]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return lp.masked_fill(labels == IGNORE_INDEX, float("nan"))


def write_checkpoint(model, out_dir: str | Path, tokenizer=None, state_dict=None, extra_from=None) -> Path:  # noqa: ANN001
    """Write ``model`` (or a gathered ``state_dict`` of it) as an HF-format ParaThinker checkpoint.

    Files are staged and moved in one by one, so ``out_dir`` may already hold other things
    (Trainer's optimizer state, earlier checkpoints under the final output directory).
    """
    from ..model import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".save-", dir=out))
    try:
        target = staging / "ckpt"
        save_model(model, target, tokenizer, state_dict=state_dict)
        if extra_from is not None:
            for name in CARRIED_FILES:
                src = Path(extra_from) / name
                if src.is_file() and not (target / name).exists():
                    shutil.copy2(src, target / name)
        for f in target.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


class ParaThinkerTrainer(Trainer):
    """Trainer with our mask, loss normalisation, counters and checkpoint format (module docstring)."""

    loss_is_scaled_for_ga = True  # the loss divides by the label tokens of the whole accumulated step

    def __init__(self, *args, tokenizer=None, model_dir: str | None = None, **kwargs):  # noqa: ANN001
        model = kwargs.get("model")
        if model is not None and not isinstance(model, TrainingModel):
            TrainingModel.from_model(model)  # the loss is computed in the model's forward (modeling.py)
        super().__init__(*args, **kwargs)
        self.pt_tokenizer = tokenizer
        self.pt_model_dir = model_dir
        self._counters: torch.Tensor | None = None  # STATS + label tokens, since this process started

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        # inputs: input_ids, positions, segment_ids, labels, kinds (+ attn_bias from a dense collator);
        # TrainingModel.forward builds the mask from kinds and returns {"loss": ...}
        stats = inputs.pop("stats", None)
        if model.training:
            c = torch.cat([stats.sum(0), inputs["labels"].ne(IGNORE_INDEX).sum().view(1)]) if stats is not None else None
            if c is not None:
                self._counters = c if self._counters is None else self._counters + c
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every rank is here (the loss gather above is collective)
            c = self._counters if self._counters is not None else torch.zeros(len(STATS) + 1, dtype=torch.long)
            c = c.to(self.args.device)
            if self.args.world_size > 1:
                c = self.accelerator.reduce(c, reduction="sum")
            names = ("truncated_examples", "dropped_paths", "cut_tokens", "label_tokens")
            logs.update({k: int(v) for k, v in zip(names, c.tolist())})
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(ds, MultiPathDataset):
            return EpochSampler(len(ds), seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:  # noqa: ANN001
        """Resume: load our safetensors strictly (Trainer's generic path expects a PreTrainedModel)."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        state: dict[str, torch.Tensor] = {}
        for f in sorted(Path(resume_from_checkpoint).glob("*.safetensors")):
            state.update(load_file(str(f)))
        missing, unexpected = target.load_state_dict(state, strict=False)
        if target.config.tie_word_embeddings:
            missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise CheckpointError(
                f"{resume_from_checkpoint}: weights do not match the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        write_checkpoint(model, output_dir, self.pt_tokenizer, state_dict, extra_from=self.pt_model_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))


class MetricsLog(TrainerCallback):
    """Appends every log record (loss, lr, grad norm, counters, time) to ``metrics.jsonl``.

    On a resume from step N the rows of steps after N (replayed now) are dropped first, so each
    step has one row. The end-of-run summary's ``train_loss`` is the mean logged loss of the whole
    run (Trainer's own counts only this process's steps: 0 after a resume with nothing left to do).
    Added before the progress bar, which then prints the corrected summary.
    """

    def __init__(self, path: Path, resumed_step: int | None = None, is_main: bool = True):
        self.path = path
        self.t0 = time.time()
        if resumed_step is not None and is_main and path.is_file():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and _row_step(line) is not None and _row_step(line) <= resumed_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not (state.is_world_process_zero and logs):
            return
        if "train_loss" in logs:
            losses = [r["loss"] for r in self._rows() if "loss" in r]
            if losses:
                logs["train_loss"] = sum(losses) / len(losses)
            else:
                logs.pop("train_loss")
        rec = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.time() - self.t0, 3), **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _row_step(line: str) -> int | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None  # a row cut by a kill
    return None if "train_runtime" in rec else int(rec.get("step", 0))


def finished_run(output_dir: Path, cfg: TrainConfig, pack_cfg: PackConfig) -> int | None:
    """The final step of a run in ``output_dir`` that finished with these settings, else None."""
    f = output_dir / "parathinker_train.json"
    try:
        run = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    same = run.get("train") == json.loads(json.dumps(asdict(cfg))) and run.get("pack") == json.loads(
        json.dumps(asdict(pack_cfg)))
    done = run.get("finished_step")
    return int(done) if same and done is not None and (output_dir / "model.safetensors").is_file() else None


class StopAtStep(TrainerCallback):
    """Ends training after ``step`` optimizer steps while the lr schedule keeps its full length."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


class LossBar(ProgressCallback):
    """Trainer's progress bar (steps, ETA) with the latest loss and lr; outside a terminal one line per log."""

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if sys.stderr.isatty():
            return super().on_train_begin(args, state, control, **kwargs)
        self.training_bar, self.current_step = tqdm(total=state.max_steps, disable=True), 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            loss, lr = f"{logs['loss']:.4f}", f"{logs.get('learning_rate', 0):.2e}"
            if self.training_bar.disable:
                print(f"step {state.global_step}/{state.max_steps}: loss {loss}, lr {lr}", file=sys.stderr, flush=True)
            self.training_bar.set_postfix(loss=loss, lr=lr)
        elif logs and "train_runtime" in logs and state.is_world_process_zero:
            super().on_log(args, state, control, logs=logs, **kwargs)


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"cannot write to --output {output_dir}: {e.strerror or e}") from None


def resolve_resume(output_dir: Path, resume: bool | str | None) -> str | None:
    """The checkpoint to resume from (``True``: the newest ``checkpoint-N`` in ``output_dir``)."""
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if not resume:
        if last is not None:
            raise ConfigError(
                f"{output_dir} already holds {Path(last).name}; pass --resume to continue it or choose another --output"
            )
        return None
    if resume is True:
        if last is None:
            raise ConfigError(f"--resume: no checkpoint-N directory in {output_dir}")
        return last
    if not Path(resume).is_dir():
        raise ConfigError(f"--resume: {resume} is not a checkpoint directory")
    return str(resume)


def train(
    model_dir: str | Path,
    data_file: str | Path,
    output_dir: str | Path,
    cfg: TrainConfig | None = None,
    pack_cfg: PackConfig | None = None,
    *,
    resume: bool | str | None = None,
    callbacks: tuple[TrainerCallback, ...] = (),
) -> Path:
    """Fine-tune the ParaThinker checkpoint ``model_dir`` on ``data_file``; returns ``output_dir``."""
    import transformers

    from ..model import load_model
    from ..prompting import PromptStyle
    from ..tokens import ControlTokens
    from .collate import encode_records, sequential_separator
    from .data import load_records
    from .prepare import quiet_transformers, read_config

    cfg = cfg or TrainConfig()
    pack_cfg = pack_cfg or PackConfig()
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    cuda = torch.cuda.is_available()
    attn_impl = resolve_attn_impl(cfg.attn_impl, "cuda" if cuda else "cpu")
    if attn_impl == "flex" and not cuda:
        raise ConfigError("--attn-impl flex needs a CUDA device (torch's FlexAttention has no backward on CPU); "
                          "use --attn-impl dense")
    read_config(model_dir)
    _check_writable(output_dir)
    resume_from = resolve_resume(output_dir, resume)
    if resume_from is not None and (done := finished_run(output_dir, cfg, pack_cfg)) is not None:
        log.info("%s finished at step %d with these settings: --resume has nothing to do "
                 "(raise --max-steps or --epochs to train further)", output_dir, done)
        return output_dir
    world = int(os.environ.get("WORLD_SIZE", "1"))
    grad_acc = cfg.accumulation(world)
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())

    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tokens = ControlTokens.from_tokenizer(tokenizer)
    records = load_records(data_file, max_paths=None if pack_cfg.sequential else tokens.max_paths)
    style = PromptStyle.from_checkpoint(model_dir)
    encoded = encode_records(records, tokenizer, style)
    dataset = MultiPathDataset(
        encoded, tokens, pack_cfg, seed=cfg.seed,
        sep_ids=sequential_separator(tokenizer) if pack_cfg.sequential else (),
        eos_id=tokenizer.eos_token_id,
    )

    model = load_model(model_dir, dtype=torch.float32, device="cpu")  # fp32 master weights; bf16 via autocast
    if not pack_cfg.thought_embeddings or pack_cfg.sequential:
        for name, p in model.named_parameters():
            if "seg_embeddings" in name:
                p.requires_grad_(False)  # the ablations run without thought embeddings: keep T as it is
    TrainingModel.from_model(model, attn_impl=attn_impl, loss_chunk_size=cfg.loss_chunk_size)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=grad_acc,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        use_cpu=not cuda,
        ddp_backend="gloo" if (world > 1 and not cuda) else None,
        deepspeed=cfg.deepspeed,
        fsdp=cfg.fsdp,
        fsdp_config=cfg.fsdp_config,
        average_tokens_across_devices=True,
    )
    collator = Collator(pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                        pad_to_multiple_of=(128 if attn_impl == "flex" else 8) if cuda else 1, dense_mask=False)
    trainer = ParaThinkerTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        tokenizer=tokenizer, model_dir=str(model_dir),
    )
    trainer.remove_callback(ProgressCallback)
    resumed_step = _checkpoint_step(resume_from) if resume_from else None
    trainer.add_callback(MetricsLog(output_dir / "metrics.jsonl", resumed_step, trainer.args.should_save))
    trainer.add_callback(LossBar())
    if cfg.stop_step:
        trainer.add_callback(StopAtStep(cfg.stop_step))
    for cb in callbacks:
        trainer.add_callback(cb)
    if trainer.args.should_save:
        run = {"model": str(model_dir), "data": str(data_file), "world_size": world, "grad_accumulation": grad_acc,
               "bf16": bf16, "attn_impl": attn_impl, "train": asdict(cfg), "pack": asdict(pack_cfg), "examples": len(dataset),
               "skipped_examples": dataset.skipped_ids, "over_length_examples": dataset.over_length,
               "finished_step": None}  # set once the final model is written
        (output_dir / "parathinker_train.json").write_text(json.dumps(run, indent=2) + "\n")
    log.info("training on %d examples, %d process(es), global batch %d = %d x %d x %d accumulation",
             len(dataset), world, cfg.global_batch_size, cfg.per_device_batch_size, world, grad_acc)
    run_file = output_dir / "parathinker_train.json"
    trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(str(output_dir))
    if trainer.args.should_save:  # after the final model is written: a finished run (a --resume is a no-op)
        run = {**json.loads(run_file.read_text()), "finished_step": trainer.state.global_step}
        run_file.write_text(json.dumps(run, indent=2) + "\n")
    return output_dir


def _checkpoint_step(checkpoint: str) -> int | None:
    """Global step of a Trainer checkpoint (its trainer_state.json, else the N of checkpoint-N)."""
    state = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        tail = Path(checkpoint).name.rpartition("-")[2]
        return int(tail) if tail.isdigit() else None
