"""Token ids to text, one piece per token as a reply streams out."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Token ids to text pieces; holds back a tail that decodes to U+FFFD (a partial character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""
        # Decode a short window, not everything: ids[start:read] is already-emitted context that
        # lets tokenizers which drop a leading space decode the new tokens the way they would in full.
        self.start = self.read = 0

    def _text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before, window = self._text(self.ids[self.start : self.read]), self._text(self.ids[self.start :])
        if len(window) <= len(before) or window.endswith("\ufffd"):
            return ""
        piece = window[len(before) :]
        self.start, self.read = self.read, len(self.ids)
        self.emitted += piece
        return piece

    def flush(self) -> str:
        """Whatever the full decode has beyond the pieces emitted (a held-back tail)."""
        full = self._text(self.ids)
        return full[len(self.emitted) :] if full.startswith(self.emitted) else ""
