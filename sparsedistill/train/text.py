"""Real text that ships offline: the Python standard library's own source files, tokenised by a
byte-level BPE trained on them with Hugging Face `tokenizers` (pip install tokenizers).

    train_text, val_text, test_text = stdlib_corpus(max_bytes=4 << 20)
    tok = train_tokenizer(train_text, vocab_size=4096)
    train_ids, val_ids = encode(tok, train_text), encode(tok, val_text)

The split is by file: a stable hash of the path relative to the stdlib's root puts 1 file in 10
into validation and another 1 in 10 into test, so no file is seen in two splits; the order of
files is sorted, so the corpus is the same on every run of one Python version.
"""
from __future__ import annotations

import hashlib
import os
import sysconfig

import torch

__all__ = ["stdlib_source_files", "split_of", "stdlib_corpus", "train_tokenizer", "encode", "random_windows"]

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "lib2to3", "encodings", "pydoc_data"}


def stdlib_source_files() -> list[str]:
    """The standard library's .py files (tests, site-packages and generated tables excluded), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    if not out:
        raise RuntimeError(f"no Python source files found under the standard library at {root}")
    return out


def split_of(path: str, root: str) -> str:
    """'validation', 'test' or 'train': the first byte of the SHA-1 of the relative path, mod 10
    (0: validation, 1: test)."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    bucket = hashlib.sha1(rel.encode()).digest()[0] % 10
    return {0: "validation", 1: "test"}.get(bucket, "train")


def stdlib_corpus(max_bytes: int = 4 << 20, held_out_bytes: int | None = None) -> tuple[str, str, str]:
    """(train_text, validation_text, test_text): each split's files concatenated in sorted order
    until max_bytes of training text (and held_out_bytes, default max_bytes // 8, of validation
    and of test text) are reached."""
    root = sysconfig.get_paths()["stdlib"]
    held_out_bytes = max_bytes // 8 if held_out_bytes is None else held_out_bytes
    limit = {"train": max_bytes, "validation": held_out_bytes, "test": held_out_bytes}
    parts = {name: [] for name in limit}
    size = dict.fromkeys(limit, 0)
    for path in stdlib_source_files():
        if all(size[k] >= limit[k] for k in limit):
            break
        split = split_of(path, root)
        if size[split] >= limit[split]:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        parts[split].append(text)
        size[split] += len(text)
    return tuple("\n".join(parts[k])[:limit[k]] for k in ("train", "validation", "test"))


def train_tokenizer(text: str, vocab_size: int = 4096):
    """A byte-level BPE tokenizer (tokenizers.Tokenizer) trained on `text`."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:
        raise ImportError("train_tokenizer needs Hugging Face tokenizers: pip install tokenizers") from e
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunks = text.split("\n\n")
    tok.train_from_iterator(chunks, trainer=trainer)
    return tok


def encode(tokenizer, text: str) -> torch.Tensor:
    """The token ids of text as one int64 tensor (encoded in paragraphs, joined)."""
    pieces = tokenizer.encode_batch(text.split("\n\n"))
    sep = tokenizer.encode("\n\n").ids
    ids = []
    for p in pieces:
        ids += p.ids + sep
    return torch.tensor(ids, dtype=torch.int64)


def random_windows(tokens: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len + 1) windows of tokens at random offsets (inputs and next-token targets)."""
    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"tokens must hold more than seq_len + 1 = {seq_len + 1} ids, got {tokens.numel()}")
    start = torch.randint(0, tokens.numel() - seq_len - 1, (batch,), generator=generator)
    return torch.stack([tokens[s:s + seq_len + 1] for s in start.tolist()])
