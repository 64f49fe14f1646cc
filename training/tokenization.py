"""A CLIP tokenizer built in memory from a word list, for offline tests and the demo.

CLIP's real vocabulary cannot be downloaded here. This builds a `CLIPTokenizer` (same pre-tokenisation,
same special tokens) whose vocabulary holds every byte-level character, so any text tokenises, plus one
token per given word. The special tokens take the two highest ids, as in CLIP's vocabulary, so pooling at
`argmax(input_ids)` lands on the end-of-text token.
"""

from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

END_OF_WORD = "</w>"


def _merges_for_word(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble `word` (with CLIP's end-of-word suffix) from its characters."""
    pieces = list(word[:-1]) + [word[-1] + END_OF_WORD]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return merges


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary has one token per (lower-case) word plus every byte character."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in alphabet + [char + END_OF_WORD for char in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words if w}):
        for left, right in _merges_for_word(word):
            if left + right not in vocab:
                merges.append((left, right))
                vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=model_max_length
    )
