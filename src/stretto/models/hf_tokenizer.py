"""A checkpoint folder's own tokenizer behind the interface of stretto's character tokenizer.

The text pipeline calls `encode(text) -> ids`, `decode(ids, stop_at_eot=True) -> text` and `vocab_size`.
Never code from the folder: `tokenizer.json` is read by `tokenizers` directly; `vocab.json` + `merges.txt`
(how Dream publishes its Qwen2 tokenizer, under a custom class name that needs remote code) are read by the
family's transformers tokenizer class; anything else goes through `AutoTokenizer` with remote code off.
"""

from __future__ import annotations

from pathlib import Path

import torch


class FolderTokenizer:
    """The tokenizer shipped in a checkpoint folder, cutting decoded answers at the end-of-text token."""

    def __init__(self, folder: str | Path, eot_id: int, bpe_class: str | None = None):
        """bpe_class: the transformers tokenizer class that reads the family's vocab.json + merges.txt."""
        import transformers

        folder = Path(folder)
        try:
            if (folder / "tokenizer.json").exists():
                self.inner = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
            elif bpe_class and (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
                self.inner = getattr(transformers, bpe_class).from_pretrained(str(folder))
            else:
                self.inner = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"no tokenizer stretto can read in {folder}: needs tokenizer.json, vocab.json + merges.txt, or "
                f"files AutoTokenizer reads without remote code ({reason})"
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
