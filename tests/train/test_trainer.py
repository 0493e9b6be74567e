"""`train` end to end on a tiny checkpoint: loss falls, checkpoints load, resume, 1 vs 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from parathinker.errors import CheckpointError, ConfigError, DataError
from parathinker.layout import IGNORE_INDEX
from parathinker.train.collate import PackConfig
from parathinker.train.config import TrainConfig
from parathinker.train.trainer import token_ce, train

from .conftest import toy_records, write_jsonl

FAST = dict(learning_rate=3e-3, warmup_ratio=0.1, epochs=0, gradient_checkpointing=False, logging_steps=1)


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", toy_records(16))


def test_token_ce_is_a_token_mean_over_the_global_batch():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3, IGNORE_INDEX], [IGNORE_INDEX] * 4 + [6]])
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(token_ce(logits, labels), ref)
    torch.testing.assert_close(token_ce(logits, labels, num_items_in_batch=8), ref * 4 / 8)


@pytest.fixture(scope="module")
def trained(prepared_qwen, toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(prepared_qwen, toy_data, out, TrainConfig(max_steps=12, global_batch_size=4, per_device_batch_size=2,
                                                    save_steps=8, **FAST), PackConfig(max_length=512))
    return out


def test_loss_falls_and_checkpoints_are_models(prepared_qwen, toy_data, trained):
    from parathinker.model import load_model

    out = trained
    loss = _losses(out)
    assert len(loss) == 12
    first, last = sum(list(loss.values())[:3]) / 3, sum(list(loss.values())[-3:]) / 3
    assert last < first - 1.0, loss
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-2])
    assert rec["label_tokens"] > 0 and rec["truncated_examples"] == 0
    for ckpt in (out / "checkpoint-8", out / "checkpoint-12", out):  # every checkpoint is a loadable ParaThinker model
        m = load_model(ckpt, dtype=torch.float32)
        assert (ckpt / "tokenizer.json").is_file() and json.loads((ckpt / "config.json").read_text())["max_segments"] == 32
        assert m.model.layers[0].self_attn.seg_embeddings.weight.abs().sum() > 0  # thought embeddings trained
    assert (out / "checkpoint-8" / "optimizer.pt").is_file()
    with pytest.raises(ConfigError, match="already holds checkpoint-12; pass --resume"):
        train(prepared_qwen, toy_data, out, TrainConfig(max_steps=1, global_batch_size=4, **FAST))


def test_trainer_logprobs_equal_engine_score(trained, toy_data):
    """Train/inference agreement: the packed forward the loss uses vs the engine's incremental decode."""
    from parathinker.engine.llm import LLM
    from parathinker.params import ParallelParams
    from parathinker.prompting import PromptStyle
    from parathinker.tokens import ControlTokens
    from parathinker.train.collate import Collator, MultiPathDataset, encode_records
    from parathinker.train.data import load_records
    from parathinker.train.trainer import token_logprobs

    llm = LLM(str(trained), device="cpu", dtype=torch.float32)
    assert llm.model.model.layers[0].self_attn.seg_embeddings.weight.abs().sum() > 0
    tok = llm.tokenizer
    enc = encode_records(load_records(toy_data), tok, PromptStyle.from_checkpoint(trained))
    # relabel_prob 0: paths get <think1..P> in order, as the engine numbers them
    ds = MultiPathDataset(enc[:3], ControlTokens.from_tokenizer(tok), PackConfig(relabel_prob=0.0), seed=5)
    worst = 0.0
    for i in range(3):
        f = ds[i]
        ours = token_logprobs(llm.model, Collator(pad_id=0, dense_mask=False)([f]))[0]
        L = len(enc[i].prompt)
        ids = f["input_ids"]
        assert ids[:L] == enc[i].prompt.tolist()
        # the released instruction in the prompt spells "<summary> </summary>": search after it
        opens = [k for k in range(L, len(ids)) if ids[k] in llm.control.think_open]
        bodies = [ids[k + 1 : ids.index(llm.control.think_close[j], k)] for j, k in enumerate(opens)]
        summary = ids[ids.index(llm.control.summary_open, L) + 1 : -1]
        out = llm.score(ids[:L], bodies, summary, ParallelParams(num_paths=len(bodies)))
        assert out.packed.input_ids == ids and out.packed.labels == f["labels"]
        theirs = torch.tensor(out.token_logprobs, dtype=torch.float32)
        assert torch.equal(theirs.isnan(), ours.isnan())
        m = ~ours.isnan()
        worst = max(worst, (theirs[m] - ours[m]).abs().max().item())
    print("max |trainer - engine| log-prob diff:", worst)
    assert worst <= 1e-4, worst


class _Crash(TrainerCallback):
    """Simulates an interruption right after a checkpoint is written."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_stop_step_ends_the_full_schedule_early(prepared_qwen, toy_data, trained, tmp_path):
    """--stop-step k of a --max-steps n schedule == the n-step run's checkpoint at step k (lr not re-scaled)."""
    out = train(prepared_qwen, toy_data, tmp_path / "stop",
                TrainConfig(max_steps=12, stop_step=8, global_batch_size=4, per_device_batch_size=2, save_steps=100,
                            **FAST), PackConfig(max_length=512))
    full, stop = _losses(trained), _losses(out)
    assert sorted(stop) == list(range(1, 9))
    assert all(abs(full[s] - stop[s]) <= 1e-5 * max(1.0, abs(full[s])) for s in stop)
    lr = lambda d: [json.loads(x).get("learning_rate") for x in (d / "metrics.jsonl").read_text().splitlines()][:8]  # noqa: E731
    assert lr(out) == lr(trained) and lr(out)[-1] > 0
    wa, wb = load_file(str(trained / "checkpoint-8" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    with pytest.raises(ConfigError, match="--stop-step"):
        TrainConfig(max_steps=4, stop_step=5)


def test_resume_reproduces_the_uninterrupted_run(prepared_qwen, tmp_path):
    toy_data = write_jsonl(tmp_path / "small.jsonl", toy_records(8))  # 2 steps an epoch: resume crosses epochs
    cfg = TrainConfig(max_steps=6, global_batch_size=4, per_device_batch_size=2, save_steps=3, **FAST)
    pack = PackConfig(max_length=512, min_paths=1)  # random path counts: the draws must replay exactly
    train(prepared_qwen, toy_data, tmp_path / "a", cfg, pack)
    with pytest.raises(KeyboardInterrupt):
        train(prepared_qwen, toy_data, tmp_path / "b", cfg, pack, callbacks=(_Crash(3),))
    assert not (tmp_path / "b" / "model.safetensors").exists()
    train(prepared_qwen, toy_data, tmp_path / "b", cfg, pack, resume=True)
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(lb) == list(range(1, 7))
    for s in range(1, 7):
        assert abs(la[s] - lb[s]) <= 1e-5 * max(1.0, abs(la[s])), (s, la[s], lb[s])
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    print("resume: max |loss diff|", max(abs(la[s] - lb[s]) for s in la), "max |weight diff|", worst)
    assert worst <= 1e-5, worst
    # one row per step (the replayed steps' rows of the killed process are gone); the summary's
    # train_loss is the whole run's mean logged loss
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 7))
    (summary,) = [r for r in rows if "train_runtime" in r]
    assert summary["train_loss"] == pytest.approx(sum(lb.values()) / 6)
    # resuming the finished run changes nothing
    before = (tmp_path / "b" / "metrics.jsonl").read_bytes(), (tmp_path / "b" / "model.safetensors").read_bytes()
    train(prepared_qwen, toy_data, tmp_path / "b", cfg, pack, resume=True)
    after = (tmp_path / "b" / "metrics.jsonl").read_bytes(), (tmp_path / "b" / "model.safetensors").read_bytes()
    assert after == before


def test_cli_resume_of_a_finished_run_says_so_and_sigint_says_interrupted(prepared_qwen, toy_data, tmp_path):
    import signal
    import time

    base = [sys.executable, "-m", "parathinker", "train", "--model", str(prepared_qwen), "--data", str(toy_data),
            "--global-batch-size", "4", "--per-device-batch-size", "2", "--lr", "1e-3",
            "--no-gradient-checkpointing", "--logging-steps", "1", "--max-length", "512"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*base, "--output", str(tmp_path / "a"), "--max-steps", "2", "--save-steps", "2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # stderr is not a terminal here (a log): no carriage-return bar, one line per logged step
    assert "\r" not in done.stderr and "step 2/2: loss" in done.stderr, done.stderr[-2000:]
    weights = (tmp_path / "a" / "model.safetensors").read_bytes()
    again = subprocess.run([*base, "--output", str(tmp_path / "a"), "--max-steps", "2", "--save-steps", "2",
                            "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr[-2000:]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == weights
    # Ctrl-C during training: one line that says so, exit 130
    proc = subprocess.Popen([*base, "--output", str(tmp_path / "b"), "--max-steps", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "parathinker: interrupted" in err, err[-2000:]
    assert "Traceback" not in err


def test_ablation_flags_train(prepared_qwen, toy_data, tmp_path):
    for name, pack in {"noseg": PackConfig(max_length=512, thought_embeddings=False),
                       "seq": PackConfig(max_length=512, sequential=True),
                       "flat": PackConfig(max_length=512, flat_positions=True)}.items():
        out = train(prepared_qwen, toy_data, tmp_path / name,
                    TrainConfig(max_steps=3, global_batch_size=4, per_device_batch_size=4, save_steps=100, **FAST), pack)
        w = load_file(str(out / "model.safetensors"))
        seg = w["model.layers.0.self_attn.seg_embeddings.weight"]
        assert (seg.abs().sum() == 0) == (name != "flat")  # frozen (still zero) in the two no-T ablations


def test_bad_inputs_fail_cleanly(prepared_qwen, toy_data, tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        train(tmp_path / "nope", toy_data, tmp_path / "o")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "q", "paths": ["p"] * 9, "summary": "s"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 9 paths, but the model has only <think1>..<think8>"):
        train(prepared_qwen, bad, tmp_path / "o")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot write to --output"):
        train(prepared_qwen, toy_data, blocker / "o")
    with pytest.raises(ConfigError, match="not a multiple"):
        train(prepared_qwen, toy_data, tmp_path / "o2", TrainConfig(global_batch_size=3, per_device_batch_size=2))
    with pytest.raises(ConfigError, match="no checkpoint-N"):
        train(prepared_qwen, toy_data, tmp_path / "o3", resume=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--attn-impl flex needs a CUDA device"):
            train(prepared_qwen, toy_data, tmp_path / "o4", TrainConfig(attn_impl="flex"))
        assert not (tmp_path / "o4").exists()
    with pytest.raises(ConfigError, match="--loss-chunk-size must be >= 0"):
        TrainConfig(loss_chunk_size=-1)


def test_checkpoint_from_a_gathered_state_dict(prepared_qwen, tmp_path):
    """ZeRO-3/FSDP saves: save_model(state_dict=) writes those weights (and their dtype), tied head dropped."""
    from parathinker.model import load_model, save_model
    from parathinker.train.trainer import write_checkpoint

    model = load_model(prepared_qwen, dtype=torch.float32)
    gathered = {k: (v + 1).to(torch.bfloat16) for k, v in model.state_dict().items()}
    out = write_checkpoint(model, tmp_path / "run", state_dict=gathered, extra_from=prepared_qwen)
    saved = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in saved and saved.keys() == gathered.keys() - {"lm_head.weight"}
    assert all(torch.equal(saved[k], gathered[k]) for k in saved)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "parathinker.json").is_file() == (prepared_qwen / "parathinker.json").is_file()
    back = load_model(out, dtype=torch.float32)
    torch.testing.assert_close(back.lm_head.weight, gathered["model.embed_tokens.weight"].float())
    plain = save_model(model, tmp_path / "plain")  # without state_dict: the model's own weights, as before
    assert json.loads((plain / "config.json").read_text())["dtype"] == "float32"
    assert torch.equal(load_file(str(plain / "model.safetensors"))["model.norm.weight"], model.model.norm.weight)


@pytest.mark.slow
def test_two_processes_follow_one(prepared_qwen, toy_data, tmp_path):
    """torchrun --nproc_per_node 2 (gloo) with the same global batch: the same loss curve."""
    common = ["--model", str(prepared_qwen), "--data", str(toy_data), "--max-steps", "8", "--epochs", "0",
              "--global-batch-size", "4", "--per-device-batch-size", "2", "--lr", "3e-3", "--save-steps", "100",
              "--no-gradient-checkpointing", "--max-length", "512", "--min-paths", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "parathinker.train.cli", "train", "--output", str(tmp_path / "one"),
                          *common], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                          "-m", "parathinker.train.cli", "train", "--output", str(tmp_path / "two"), *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "parathinker_train.json").read_text())["world_size"] == 2
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    print("1-process", l1, "\n2-process", l2)
    assert sorted(l1) == sorted(l2) == list(range(1, 9))
    for s in l1:
        assert abs(l1[s] - l2[s]) <= 1e-3 * abs(l1[s]), (s, l1[s], l2[s])
