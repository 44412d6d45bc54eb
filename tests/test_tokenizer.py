"""The byte tokenizer: lossless on any text and any bytes, streaming decode, specials, vocabulary bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqedge.config import SequentialAttentionConfig
from seqedge.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer

TOK = ByteTokenizer()
FAST = settings(deadline=None)   # no per-example deadline: a loaded shared machine must not make these flaky


@FAST
@given(st.text())
def test_text_round_trip(text):
    ids = TOK.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert TOK.decode(ids) == text


@FAST
@given(st.binary())
def test_bytes_round_trip(data):
    assert TOK.decode_bytes(TOK.encode_bytes(data)) == data


@FAST
@given(st.text(), st.booleans(), st.booleans())
def test_specials_are_dropped_on_decode(text, bos, eos):
    ids = TOK.encode(text, add_bos=bos, add_eos=eos)
    assert (BOS_ID in ids) == bos and (EOS_ID in ids) == eos
    assert ids[1 if bos else 0:len(ids) - (1 if eos else 0)] == list(text.encode("utf-8"))
    assert TOK.decode(ids + [PAD_ID]) == text


@FAST
@given(st.text())
def test_stream_decoder_reassembles_characters(text):
    decoder = TOK.stream_decoder()
    pieces = [decoder.push(i) for i in TOK.encode(text, add_bos=True)]
    assert "".join(pieces) + decoder.flush() == text


@FAST
@given(st.binary())
def test_stream_decoder_matches_bulk_decode_on_any_bytes(data):
    decoder = TOK.stream_decoder()
    streamed = "".join(decoder.push(i) for i in data) + decoder.flush()
    assert streamed == TOK.decode(list(data))


def test_stream_decoder_waits_for_a_split_multibyte_character():
    decoder = TOK.stream_decoder()
    first, second = "é€".encode("utf-8")[:2], "é€".encode("utf-8")[2:]         # é is 2 bytes, € is 3
    assert [decoder.push(b) for b in first] == ["", "é"]
    assert [decoder.push(b) for b in second] == ["", "", "€"]
    assert decoder.push(EOS_ID) == ""
    decoder.push(0xE2)                                                           # a dangling lead byte
    assert decoder.flush() == "\ufffd"


@pytest.mark.parametrize("bad", [259, -1, 10**6])
def test_out_of_range_ids_raise(bad):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([65, bad])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.stream_decoder().push(bad)


def test_vocabulary_matches_the_model_config():
    assert TOK.vocab_size == 259 == SequentialAttentionConfig().vocab_size
    assert (BOS_ID, EOS_ID, PAD_ID) == (256, 257, 258)
    assert TOK.to_dict() == {"type": "bytes", "bos_id": 256, "eos_id": 257, "pad_id": 258, "vocab_size": 259}
