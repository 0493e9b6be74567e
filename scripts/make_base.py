"""Build a tiny randomly initialised Llama base for the pathfind task (step 2 of train_bundled.sh).

    python scripts/make_base.py --tokenizer DATA/tokenizer --out DIR [--hidden 256 --layers 4 ...]

Writes a Hugging Face checkpoint (config.json, model.safetensors) with the task tokenizer and its
parathinker.json; `parathinker prepare` then adds the thought-embedding tables.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="task tokenizer folder (from make-data)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=0, help="0: 4 x hidden")
    ap.add_argument("--max-positions", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        intermediate_size=a.intermediate or 4 * a.hidden,
        max_position_embeddings=a.max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<bos>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg)
    out = Path(a.out)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    pj = Path(a.tokenizer) / "parathinker.json"
    if pj.is_file():
        shutil.copy(pj, out / "parathinker.json")
    n = sum(p.numel() for p in model.parameters())
    print(f"base model: {n / 1e6:.2f}M parameters, vocab {len(tok)} -> {out}")


if __name__ == "__main__":
    main()
