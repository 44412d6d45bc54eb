import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BOS_ID, EOS_ID, PAD_ID, StreamDecoder, checkTokenizer, decode, encode } from '../src/tokenizer.js';

test('encode is UTF-8 bytes framed by the specials', () => {
  assert.deepEqual(encode('hé'), [104, 0xc3, 0xa9]);
  assert.deepEqual(encode('hé', { addBos: true, addEos: true }), [BOS_ID, 104, 0xc3, 0xa9, EOS_ID]);
  assert.deepEqual(encode(''), []);
});

test('decode drops specials, replaces invalid UTF-8 and refuses ids outside the vocabulary', () => {
  assert.equal(decode([BOS_ID, 104, 0xc3, 0xa9, EOS_ID, PAD_ID]), 'hé');
  assert.equal(decode([0xff, 65]), '\ufffdA');
  assert.throws(() => decode([259]), /outside the vocabulary/);
  assert.throws(() => decode([-1]), /outside the vocabulary/);
});

test('round trip of random text', () => {
  const text = 'Grüße, 世界! 🙂\n\tend';
  assert.equal(decode(encode(text, { addBos: true })), text);
});

test('the stream decoder prints a multi-byte character once it is complete', () => {
  const d = new StreamDecoder();
  const pieces = encode('a€b').map((id) => d.push(id));
  assert.deepEqual(pieces, ['a', '', '', '€', 'b']);
  assert.equal(d.push(BOS_ID), '');
  assert.equal(new StreamDecoder().push(0xe2) + '', '');
  const cut = new StreamDecoder();
  cut.push(0xe2);
  assert.equal(cut.flush(), '\ufffd');
});

test('only the byte tokenizer of the manifest is accepted', () => {
  checkTokenizer({ type: 'bytes', bos_id: 256, eos_id: 257, pad_id: 258, vocab_size: 259 });
  assert.throws(() => checkTokenizer({ type: 'hf', vocab_size: 32000 }), /not the byte tokenizer/);
  assert.throws(() => checkTokenizer(undefined), /not the byte tokenizer/);
  assert.throws(() => checkTokenizer({ type: 'hf-tokenizers', vocab_size: 300 }),
    /tokenizer is type 'hf-tokenizers' \(a Hugging Face tokenizer.json\)/);
});
