"""What a text stream sends after each decoding step: the tokens committed since the last event, per prompt.

Parallel decoding commits several tokens per step, anywhere in the current block. Each event lists them as
(position, text) for a viewer that unmasks in place, and also carries `text`: the part of the answer that
became final left to right (no mask before it), so an OpenAI client that concatenates `text` gets the answer.
"""

from __future__ import annotations

import torch


class Unmasking:
    """Per prompt: the committed tokens of each step, and how far the answer is final from the left."""

    def __init__(self, tokenizer, gen_start: int, rows: int, mask_id: int, eot_id: int):
        self.tokenizer, self.gen_start, self.mask_id, self.eot_id = tokenizer, gen_start, mask_id, eot_id
        self.final = [0] * rows  # answer positions final from the left
        self.ended = [False] * rows  # the row's end-of-text is final

    def step(self, canvas: torch.Tensor, block: tuple[int, int], committed: torch.Tensor) -> list[dict]:
        """The choices of one event: per row its newly committed tokens and its newly final text."""
        gen = canvas[:, self.gen_start :].tolist()
        first = block[0] - self.gen_start
        choices = []
        for row, ids in enumerate(gen):
            tokens = []
            for offset in committed[row].nonzero().flatten().tolist():
                token = ids[first + offset]
                if token != self.eot_id:
                    text = self.tokenizer.decode([token], stop_at_eot=False)
                    tokens.append({"position": first + offset, "text": text})
            choices.append({"index": row, "text": self._advance(row, ids), "tokens": tokens})
        return choices

    def _advance(self, row: int, ids: list[int]) -> str:
        start = end = self.final[row]
        while not self.ended[row] and end < len(ids) and ids[end] != self.mask_id:
            if ids[end] == self.eot_id:
                self.ended[row] = True
                break
            end += 1
        self.final[row] = end
        return self.tokenizer.decode(ids[start:end]) if end > start else ""
