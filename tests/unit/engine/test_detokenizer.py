"""IncrementalDetokenizer on real byte-level BPE and Metaspace tokenizers trained in-test."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.detokenizer import IncrementalDetokenizer

EOS = "<|endoftext|>"
CORPUS = [
    "héllo wörld 日本語 🙂",
    "hello world, the stop word is END here",
    "日本語のテキスト and more words ñandú café",
] * 20


class TokenizerAdapter:
    """The detokenizer's tokenizer protocol over a `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.decoded_lengths: list[int] = []

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.decoded_lengths.append(len(ids))
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


@pytest.fixture(scope="module")
def byte_bpe() -> TokenizerAdapter:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,  # 256 byte tokens + a few merges: multi-byte chars stay split
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return TokenizerAdapter(tokenizer)


@pytest.fixture(scope="module")
def metaspace() -> TokenizerAdapter:
    """SentencePiece-style: decoding a lone '▁word' token drops its leading space."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>"], show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return TokenizerAdapter(tokenizer)


def byte_ids(tok: TokenizerAdapter, text: str) -> list[int]:
    """One token per UTF-8 byte of text."""
    to_char = _byte_to_unicode()
    return [token_id(tok, to_char[b]) for b in text.encode()]


def token_id(tok: TokenizerAdapter, token: str) -> int:
    found = tok.tokenizer.token_to_id(token)
    assert found is not None, token
    return found


def feed(detok: IncrementalDetokenizer, ids: Iterable[int]) -> list[str]:
    return [detok.add_token(i) for i in ids]


@pytest.mark.parametrize("text", ["héllo wörld 日本語 🙂", "🙂🙂 café, ñandú!", "plain ascii"])
@pytest.mark.parametrize("prompt", ["", "日本語のテキスト"])
def test_deltas_concatenate_to_the_full_decode(
    byte_bpe: TokenizerAdapter, text: str, prompt: str
) -> None:
    ids = byte_bpe.encode(text)
    detok = IncrementalDetokenizer(byte_bpe, byte_bpe.encode(prompt))
    deltas = [*feed(detok, ids), detok.finish()]
    assert "".join(deltas) == byte_bpe.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert detok.text == text


def test_multibyte_character_fed_byte_by_byte_never_yields_replacement_char(
    byte_bpe: TokenizerAdapter,
) -> None:
    text = "a日本語 🙂é"
    ids = byte_ids(byte_bpe, text)
    assert len(ids) == len(text.encode())  # really one token per byte
    detok = IncrementalDetokenizer(byte_bpe, [])
    deltas = feed(detok, ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == byte_bpe.decode(ids) == text
    # "日" is three bytes: nothing comes out until the third one.
    assert deltas[1:4] == ["", "", "日"]


def test_finish_drops_an_unfinished_multibyte_character(byte_bpe: TokenizerAdapter) -> None:
    detok = IncrementalDetokenizer(byte_bpe, [])
    deltas = feed(detok, byte_ids(byte_bpe, "ok 🙂")[:-2])  # emoji cut after 2 of 4 bytes
    assert "".join(deltas) == "ok "
    assert detok.finish() == ""
    assert detok.text == "ok "


def test_leading_spaces_survive_sentencepiece_style_decoding(metaspace: TokenizerAdapter) -> None:
    ids = metaspace.encode("hello world the stop word is here")
    prompt, output = ids[:2], ids[2:]
    detok = IncrementalDetokenizer(metaspace, prompt)
    streamed = "".join([*feed(detok, output), detok.finish()])
    assert metaspace.decode(prompt) + streamed == metaspace.decode(ids)
    assert streamed.startswith(" ")  # a lone-token decode would have lost this space


def test_stop_string_split_across_tokens_is_never_emitted(byte_bpe: TokenizerAdapter) -> None:
    # Byte by byte, so "wörld" spans six tokens and its "ö" two of them.
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["wörld"])
    deltas = feed(detok, byte_ids(byte_bpe, "héllo wörld 日本語"))
    assert detok.stop_reason == "wörld"
    assert "".join(deltas) == detok.text == "héllo "
    assert detok.add_token(byte_bpe.encode("x")[0]) == ""  # nothing after the stop
    assert detok.finish() == ""


def test_stop_string_inside_one_token_cuts_the_text_before_it(
    byte_bpe: TokenizerAdapter,
) -> None:
    ids = byte_bpe.encode("hello world, the stop word is END here")
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["END"])
    deltas = feed(detok, ids)
    assert detok.stop_reason == "END"
    assert "".join(deltas) == "hello world, the stop word is "


def test_earliest_of_several_stop_strings_wins(byte_bpe: TokenizerAdapter) -> None:
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["world", "llo"])
    deltas = feed(detok, byte_bpe.encode("héllo wörld, hello world"))
    assert detok.stop_reason == "llo"
    assert "".join(deltas) == "hé"


def test_partial_stop_prefix_is_released_when_it_diverges(byte_bpe: TokenizerAdapter) -> None:
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["END!"])
    deltas = feed(detok, byte_ids(byte_bpe, "the END"))
    assert "".join(deltas) == "the "  # "END" could still become "END!"
    assert detok.add_token(byte_ids(byte_bpe, "?")[0]) == "END?"
    assert detok.stop_reason is None
    assert detok.text == "the END?"


def test_finish_releases_a_held_stop_prefix(byte_bpe: TokenizerAdapter) -> None:
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["END!"])
    deltas = feed(detok, byte_ids(byte_bpe, "the EN"))
    assert "".join(deltas) == "the "
    assert detok.finish() == "EN"
    assert detok.text == "the EN"
    assert detok.stop_reason is None


def test_special_tokens_follow_skip_special_tokens(byte_bpe: TokenizerAdapter) -> None:
    eos = token_id(byte_bpe, EOS)
    ids = [*byte_bpe.encode("a b"), eos, *byte_bpe.encode(" c")]
    skipping = IncrementalDetokenizer(byte_bpe, [])
    assert "".join([*feed(skipping, ids), skipping.finish()]) == "a b c"
    keeping = IncrementalDetokenizer(byte_bpe, [], skip_special_tokens=False)
    assert "".join([*feed(keeping, ids), keeping.finish()]) == f"a b{EOS} c"


def test_work_per_token_does_not_grow_with_the_output(byte_bpe: TokenizerAdapter) -> None:
    ids = byte_bpe.encode("héllo wörld 日本語 🙂 " * 60)
    prompt = byte_bpe.encode("日本語のテキスト and more words " * 10)
    byte_bpe.decoded_lengths.clear()
    detok = IncrementalDetokenizer(byte_bpe, prompt, stop=["never appears"])
    feed(detok, ids)
    assert len(ids) > 500
    # The longest window is the 4-byte emoji split over three tokens plus its context.
    assert max(byte_bpe.decoded_lengths) <= 8
    assert len(byte_bpe.decoded_lengths) <= 2 * len(ids)
