"""Attention over the paged KV pool: the oracle, the prefill forms and the decode backends.

``base``: the K/V store every backend shares and the decode-attention interface; ``reference``: the
oracle (explicit mask, SDPA); ``prefill``: multi-token chunks in SDPA's causal modes; ``cascade``: the
torch decode backend (the CPU default); ``triton``: the Triton decode kernel over work lists (CUDA).
"""
