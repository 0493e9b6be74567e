"""parathinker: native parallel thinking for LLMs (ParaThinker, arXiv 2509.04475)."""

from __future__ import annotations

__version__ = "0.1.0"
