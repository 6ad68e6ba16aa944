"""Locally built tokenizers, wrapped as ``PreTrainedTokenizerFast``: byte-level and trained BPE.

Used by notebook 03 (byte-level for training) and by the exposure tests (BPE with multi-digit tokens).
"""
from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _wrap(tokenizer_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object, eos_token=EOS, bos_token=EOS, unk_token=None, pad_token=EOS
    )


def make_byte_tokenizer():
    """A byte-level tokenizer: one token per byte (ids 0-255 in byte order) plus ``<|endoftext|>`` (256).

    Each digit of a secret is one token, so a six-digit space forms a perfect 10-ary trie.
    Notebook 03, "A tokenizer of our own"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in sorted(_bytes_to_unicode().items())}
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return _wrap(tok)


def check_texts(value, argument: str = "texts") -> None:
    """Raise ``TypeError`` when ``value``, which should be a list of texts, is one string (or bytes): it
    would be read as one text per character. The public functions that take texts call this at the door."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{argument} must be a list of texts, got one string of {len(value)} characters (it would count "
                        f"every character as a text); pass [{argument}] for a single text")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) on ``texts``.

    With digits in the training text, merges create multi-digit tokens, so secrets split into
    pieces of different lengths. Notebook 03, "Exposure for any tokenizer"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    check_texts(texts)

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + end-of-text), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(tok)
