"""CLIP's BPE tokenizer through the ``tokenizers`` library alone (no transformers, no torch).

Built as transformers' CLIPTokenizer builds it: tokenizer.json as saved, or vocab.json + merges.txt
with CLIP's normaliser, pre-tokeniser and start/end tokens; the same ids for every text (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipseg_cli.constants import MERGES_FILE, TOKENIZER_FILE, VOCAB_FILE
from clipseg_cli.errors import CheckpointError
from clipseg_cli.modeling.config import read_checkpoint_json

# transformers' CLIPTokenizer: the split of text into words before byte-level BPE
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_DEFAULT_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>"}
_SPECIAL_FILES = ("special_tokens_map.json", "tokenizer_config.json")


class ClipTokenizer:
    """Texts to padded token ids and attention masks, as transformers' CLIPTokenizer gives them."""

    def __init__(self, directory: Path, max_length: int, vocab_size: int) -> None:
        """Read a checkpoint's tokenizer files; raises CheckpointError naming the folder when they are unusable.

        Arguments:
            max_length: the text tower's positions (longer texts are truncated).
            vocab_size: its vocabulary.
        """
        special = _special_tokens(directory)
        try:
            self.tokenizer = _build(directory, special)
        except CheckpointError:
            raise
        except Exception as exc:  # damaged tokenizer files raise many types
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CheckpointError(directory, f"cannot read the tokenizer files ({reason})") from None
        self.pad_id = self.tokenizer.token_to_id(special["pad_token"])
        if self.tokenizer.get_vocab_size() > vocab_size or self.pad_id is None:
            raise CheckpointError(directory, f"the tokenizer ({self.tokenizer.get_vocab_size()} tokens) does not fit "
                                  f"the text tower ({vocab_size} tokens); the tokenizer files belong to another model")
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise texts, padded to the longest.

        Returns:
            (input_ids, attention_mask), each an int64 array PxT.
        """
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask


def _special_tokens(directory: Path) -> dict[str, str]:
    """The start, end, unknown and padding tokens named by the checkpoint's files (CLIP's by default)."""
    special = dict(_DEFAULT_SPECIAL)
    for name in _SPECIAL_FILES:  # tokenizer_config.json wins, as in transformers
        path = directory / name
        if not path.is_file():
            continue
        raw = read_checkpoint_json(path)
        for key in _DEFAULT_SPECIAL:
            value = raw.get(key) if isinstance(raw, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                special[key] = value
    return special


def _build(directory: Path, special: dict[str, str]) -> Any:
    """A ``tokenizers.Tokenizer``: tokenizer.json as saved, else CLIP's pipeline over vocab.json and merges.txt."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    elif (directory / VOCAB_FILE).is_file() and (directory / MERGES_FILE).is_file():
        vocab, merges = BPE.read_file(str(directory / VOCAB_FILE), str(directory / MERGES_FILE))
        tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                  end_of_word_suffix="</w>", fuse_unk=False, unk_token=special["unk_token"]))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
    else:
        raise CheckpointError(directory, f"no tokenizer: looked for {TOKENIZER_FILE}, or {VOCAB_FILE} with "
                              f"{MERGES_FILE}; copy the checkpoint's tokenizer files beside its weights")
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in dict.fromkeys(special.values())])
    bos, eos = special["bos_token"], special["eos_token"]
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)), trim_offsets=False,
        add_prefix_space=False)
    return tokenizer
