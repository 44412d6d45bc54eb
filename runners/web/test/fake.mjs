// A stand-in for an onnxruntime binding: graphs whose bytes name their entry point and whose recurrence is
// simple enough to compute by hand (state.0 <- state.0 / 2 + token, state.1 <- state.1 + 1; logits are the
// new state, the token and the call kind), with every run recorded.

import { sha256Hex } from '../src/manifest.js';

export const V = 4;
export const SPECS = [
  { name: 'state.0', layer: 0, kind: 'conv', shape: ['batch', 1], dtype: 'float32' },
  { name: 'state.1', layer: 0, kind: 'scan', shape: ['batch', 1, 1], dtype: 'float32' },
];

export function fakeOrt(calls = []) {
  class Tensor {
    constructor(type, data, dims) {
      Object.assign(this, { type, data, dims });
    }
  }
  class Graph {
    constructor(entry) {
      this.entry = entry;
      this.inputNames = ['tokens', 'state.0', 'state.1'];
      this.outputNames = ['logits', 'new_state.0', 'new_state.1'];
    }

    async run(feeds) {
      const tokens = Array.from(feeds.tokens.data, Number);
      calls.push([this.entry, tokens.length]);
      let [a] = feeds['state.0'].data;
      let [b] = feeds['state.1'].data;
      const logits = new Float32Array(tokens.length * V);
      tokens.forEach((t, i) => {
        a = a / 2 + t;
        b += 1;
        logits.set([a, b, t, this.entry === 'chunk' ? 1 : 0], i * V);
      });
      return { logits: new Tensor('float32', logits, [1, tokens.length, V]),
        'new_state.0': new Tensor('float32', Float32Array.of(a), [1, 1]),
        'new_state.1': new Tensor('float32', Float32Array.of(b), [1, 1, 1]) };
    }

    async release() {}
  }
  return { Tensor, InferenceSession: { create: async (bytes) => new Graph(new TextDecoder().decode(bytes)) } };
}

/** A manifest of a fake artifact whose files live in `files` (path -> bytes), with correct hashes. */
export async function fakeArtifact({ chunkSize = 4 } = {}) {
  const files = new Map();
  const records = {};
  for (const entry of ['step', 'chunk']) {
    const path = `onnx-ort/fp32/${entry}.onnx`;
    const bytes = new TextEncoder().encode(entry);
    files.set(path, bytes);
    records[entry] = { path, sha256: await sha256Hex(bytes), bytes: bytes.length };
  }
  const manifest = {
    format: 'seqedge-artifact', format_version: 1, fingerprint: 'f00d', chunk_size: chunkSize,
    model: { vocab_size: V }, state: SPECS,
    tokenizer: { type: 'bytes', bos_id: 256, eos_id: 257, pad_id: 258, vocab_size: 259 },
    variants: [{ target: 'onnx-ort', quantization: { scheme: 'none' }, files: records, info: {} }],
  };
  const readFile = async (path) => {
    if (!files.has(path)) throw new Error(`no such file: ${path}`);
    return files.get(path);
  };
  return { manifest, files, readFile };
}
