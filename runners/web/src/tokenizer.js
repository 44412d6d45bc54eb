// Byte-level tokenizer: ids 0-255 are the UTF-8 bytes, then BOS, EOS and PAD (as seqedge/tokenizer.py).

export const BOS_ID = 256;
export const EOS_ID = 257;
export const PAD_ID = 258;
export const VOCAB_SIZE = 259;

const encoder = new TextEncoder();

/** Text -> ids (its UTF-8 bytes), optionally framed by BOS/EOS. */
export function encode(text, { addBos = false, addEos = false } = {}) {
  const ids = Array.from(encoder.encode(text));
  return [...(addBos ? [BOS_ID] : []), ...ids, ...(addEos ? [EOS_ID] : [])];
}

/** Ids -> bytes, dropping specials; throws RangeError on an id outside the vocabulary. */
export function decodeBytes(ids) {
  const out = [];
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= VOCAB_SIZE) {
      throw new RangeError(`token id ${id} is outside the vocabulary [0, ${VOCAB_SIZE})`);
    }
    if (id < 256) out.push(id);
  }
  return Uint8Array.from(out);
}

/** Ids -> text; invalid UTF-8 (a model can emit any byte) becomes U+FFFD instead of failing. */
export function decode(ids) {
  return new TextDecoder('utf-8').decode(decodeBytes(ids));
}

/** Incremental decoding for streamed output: a multi-byte character appears once it is complete. */
export class StreamDecoder {
  constructor() {
    this.decoder = new TextDecoder('utf-8');
  }

  push(id) {
    return this.decoder.decode(decodeBytes([id]), { stream: true });
  }

  flush() {
    return this.decoder.decode();
  }
}

/** The manifest's tokenizer record must describe this byte tokenizer; anything else is refused. */
export function checkTokenizer(record) {
  if (record && record.type === 'hf-tokenizers') {
    throw new Error("the artifact's tokenizer is type 'hf-tokenizers' (a Hugging Face tokenizer.json), which this " +
      'runner does not implement (it has the byte tokenizer only); run the artifact with Python: ' +
      '`seqedge generate -m ARTIFACT --prompt ...`');
  }
  const expected = { type: 'bytes', bos_id: BOS_ID, eos_id: EOS_ID, pad_id: PAD_ID, vocab_size: VOCAB_SIZE };
  for (const [key, value] of Object.entries(expected)) {
    if (!record || record[key] !== value) {
      throw new Error(`the artifact's tokenizer ${JSON.stringify(record)} is not the byte tokenizer this runner ` +
        `implements (${key} should be ${value}); export a byte-level model`);
    }
  }
}
