"""Time per decode step: the parathinker engine vs transformers generate(num_return_sequences=P).

Both run the same model in the same process, interleaved, on the same prompt. A run's number is
the median of its decode steps' times (stamped by the engine's step callback and by a
transformers stopping criterion; prefill excluded, bursts of noise from a shared machine
filtered); each reported number is the median of --repeats runs, and the speed-up is the median
of the per-repeat ratios (each from two runs back to back). The engine decodes P samples that share one prefilled
prompt (its batched path step); transformers expands the prompt P times and decodes the batch
with its dynamic cache. Steps are forced to the same count (EOS ignored on both sides).

    python benchmarks/decode_vs_hf.py --model smollm2 --paths 1,4,8 --tokens 64
    python benchmarks/decode_vs_hf.py --model smollm2 --paths 8 --prompt-tokens 2048   # a long shared prompt
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams

CLOCK = time.perf_counter  # --clock process: CPU time of this process (robust on a shared machine)

PROMPT = "Explain step by step why the sum of the first n odd numbers is n squared."


def engine_step_ms(llm: LLM, prompt_ids: list[int], P: int, tokens: int) -> float:
    """Median time of the engine's decode steps (one batched forward + sampling each) in one run."""
    from parathinker.engine.sequence import RequestSpec

    pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=tokens)
    spec = RequestSpec(list(prompt_ids), pp, SamplingParams(temperature=0.8, top_p=0.95, seed=0, ignore_eos=True), [])
    stamps: list[float] = []
    (req,) = llm.engine.run([spec], on_step=lambda active: stamps.append(CLOCK()))
    assert all(len(s.body) == tokens for s in req.seqs)
    return 1000 * statistics.median(b - a for a, b in zip(stamps, stamps[1:]))  # prefill excluded


def hf_step_ms(hf, ids: torch.Tensor, P: int, tokens: int) -> float:  # noqa: ANN001
    """Median time of transformers' decode steps (between two calls of its stopping criteria) in one run."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN003
            if ids.device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(CLOCK())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.inference_mode():
        hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.8, top_p=0.95,
                    num_return_sequences=P, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0,
                    stopping_criteria=StoppingCriteriaList([Stamp()]))
    return 1000 * statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--paths", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="a longer shared prompt: the question repeated and cut to this many tokens (0: the question)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="process = CPU seconds of this process (use with --threads 1 on a busy machine)")
    ap.add_argument("--unpacked", action="store_true",
                    help="CPU: also time the engine with its GEMMs through F.linear (no oneDNN-packed weights)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "process":
        CLOCK = time.process_time
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    llm = LLM(args.model, device=args.device, dtype=dtype, cache=CacheConfig(kv_cache_memory=1.0))
    hf = AutoModelForCausalLM.from_pretrained(str(llm.path), dtype=dtype).to(args.device).eval()
    prompt_ids = llm.encode_prompt(PROMPT)
    if args.prompt_tokens:
        body = llm.tokenizer.encode(" " + PROMPT, add_special_tokens=False)
        prompt_ids = (prompt_ids + body * (args.prompt_tokens // len(body) + 1))[: args.prompt_tokens]
    ids = torch.tensor([prompt_ids], device=args.device)
    engine_step_ms(llm, prompt_ids, 1, 4)  # warm-up both
    hf_step_ms(hf, ids, 1, 4)
    rows = []
    runner = llm.engine.runner
    packed = runner.fused is not None and runner.fused.packed
    print(f"model {llm.path.name}, prompt {ids.shape[1]} tokens, {args.tokens} decode steps, "
          f"median of {args.repeats}, torch threads {torch.get_num_threads()}, {args.clock} clock, "
          f"engine GEMMs {'packed (oneDNN)' if packed else 'F.linear'}")
    unpacked = args.unpacked and packed
    if unpacked:  # a second engine over the same checkpoint, its GEMMs through F.linear
        llm_unpacked = LLM(args.model, device=args.device, dtype=dtype, cache=CacheConfig(kv_cache_memory=1.0),
                           decode=DecodeConfig(packed_weights=False))
        engine_step_ms(llm_unpacked, prompt_ids, 1, 4)  # warm-up
    print(f"{'P':>3} {'engine ms/step':>15} {'HF ms/step':>11} {'engine tok/s':>13} {'HF tok/s':>9} {'speed-up':>9}"
          + (f" {'unpacked ms/step':>17} {'unpacked speed-up':>18}" if unpacked else ""))
    for P in [int(x) for x in args.paths.split(",")]:
        e, h, u = [], [], []
        for _ in range(args.repeats):
            e.append(engine_step_ms(llm, prompt_ids, P, args.tokens))
            h.append(hf_step_ms(hf, ids, P, args.tokens))
            if unpacked:
                u.append(engine_step_ms(llm_unpacked, prompt_ids, P, args.tokens))
        em, hm = statistics.median(e), statistics.median(h)
        ratio = statistics.median(b / a for a, b in zip(e, h))
        row = dict(P=P, engine_ms=em, hf_ms=hm, engine_tok_s=1000 * P / em, hf_tok_s=1000 * P / hm, speedup=ratio,
                   engine_packed=packed, engine_runs=e, hf_runs=h)
        line = f"{P:>3} {em:>15.2f} {hm:>11.2f} {row['engine_tok_s']:>13.1f} {row['hf_tok_s']:>9.1f} {ratio:>8.2f}x"
        if unpacked:
            row.update(unpacked_ms=statistics.median(u), unpacked_speedup=statistics.median(b / a for a, b in zip(u, h)),
                       unpacked_runs=u)
            line += f" {row['unpacked_ms']:>17.2f} {row['unpacked_speedup']:>17.2f}x"
        rows.append(row)
        print(line, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/, absent in a fresh clone
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
