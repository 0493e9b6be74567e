"""Incremental detokenization for streams: new text per step, safe across merged and multi-byte tokens.

Decoding a growing token list one token at a time is wrong for byte-level BPE (a character
can span tokens: the pieces would carry U+FFFD) and for tokenizers whose decoder adds spaces
between tokens (a token decoded alone has no left context). So each step decodes a short
window that starts a few tokens back, and emits the window's text past what the same window
without the new tokens decoded to, holding back while the text ends in an incomplete
character. ``finish`` emits whatever the windowed pieces missed, so a part's pieces always add
up to its final text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]
CONTEXT = 4  # tokens of left context kept in the window once a piece is out


class IncrementalDetokenizer:
    """Text pieces of one growing token list (a path, a sample or a summary)."""

    def __init__(self, decode: Decode, lead: str = ""):
        """``lead``: text that opens the stream (the summary's forced prefix), sent with the first piece."""
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: a few tokens of left context
        self.read = 0  # tokens whose text was emitted
        self.lead = lead
        self.emitted = ""

    def push(self, new_ids: Sequence[int]) -> str:
        """Append tokens; return the new text that is certain (may be '')."""
        self.ids.extend(new_ids)
        before = self.decode(self.ids[self.prefix : self.read])
        after = self.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        self.prefix, self.read = max(self.read, len(self.ids) - CONTEXT), len(self.ids)
        return self._emit(after[len(before) :])

    def finish(self, final_text: str) -> str:
        """The rest of ``final_text`` (the part's text as the output has it) not yet emitted."""
        # (if the windowed pieces ever disagreed with the full decode, nothing can be taken back)
        rest = final_text[len(self.emitted) :] if final_text.startswith(self.emitted) else ""
        self.emitted += rest
        self.lead = ""
        return rest

    def _emit(self, piece: str) -> str:
        if self.lead:
            joiner = " " if not piece.startswith(" ") else ""
            piece, self.lead = self.lead + joiner + piece, ""
        self.emitted += piece
        return piece
