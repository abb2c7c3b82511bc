"""A checkpoint folder's own tokenizer behind the interface of stretto's character tokenizer.

The text pipeline calls `encode(text) -> ids`, `decode(ids, stop_at_eot=True) -> text` and `vocab_size`.
`tokenizer.json` is read by `tokenizers` directly (no class lookup, no code from the folder); a folder without
one goes through `AutoTokenizer` with remote code off (a tokenizer that needs the folder's Python is refused).
"""

from __future__ import annotations

from pathlib import Path

import torch


class FolderTokenizer:
    """The tokenizer shipped in a checkpoint folder, cutting decoded answers at the end-of-text token."""

    def __init__(self, folder: str | Path, eot_id: int):
        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            from transformers import PreTrainedTokenizerFast

            self.inner = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            try:
                self.inner = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            except (OSError, ValueError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(
                    f"no tokenizer stretto can read in {folder}: needs tokenizer.json, or files AutoTokenizer "
                    f"reads without remote code ({reason})"
                ) from None
        self.eot_id = eot_id

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer can produce, added tokens included."""
        return len(self.inner)

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the special tokens the tokenizer itself adds (e.g. a BOS)."""
        return self.inner.encode(text)

    def decode(self, ids, stop_at_eot: bool = True) -> str:
        """Text of ids (a list or a tensor), cut before the first end-of-text unless stop_at_eot is False."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if stop_at_eot and self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return self.inner.decode(ids, skip_special_tokens=False)
