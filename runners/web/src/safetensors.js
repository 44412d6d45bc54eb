// A minimal safetensors reader/writer for float32 tensors (the format of seqedge's State.save): an 8-byte
// little-endian header length, a JSON header (dtype, shape, data_offsets per tensor; string metadata), the data.

const MAX_HEADER = 100 * 1024 * 1024;

/** bytes -> { metadata: {string: string}, tensors: {name: {shape, data: Float32Array}} }; throws on a bad file. */
export function readSafetensors(bytes) {
  // a plain view: a Node Buffer's slice() would share memory instead of copying
  const u8 = ArrayBuffer.isView(bytes) ? new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    : new Uint8Array(bytes);
  if (u8.byteLength < 8) throw new Error(`not a safetensors file: ${u8.byteLength} bytes, less than its header`);
  const view = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > MAX_HEADER || 8 + headerLen > u8.byteLength) {
    throw new Error(`not a safetensors file: header of ${headerLen} bytes in a ${u8.byteLength}-byte file`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(u8.subarray(8, 8 + headerLen)));
  } catch (err) {
    throw new Error(`not a safetensors file: its header is not JSON (${err.message})`);
  }
  const dataStart = 8 + headerLen;
  const dataLen = u8.byteLength - dataStart;
  const { __metadata__: metadata = {}, ...entries } = header;
  const tensors = {};
  for (const [name, entry] of Object.entries(entries)) {
    const { dtype, shape, data_offsets: offsets } = entry ?? {};
    if (dtype !== 'F32') throw new Error(`tensor ${name} has dtype ${dtype}; this reader holds F32 only`);
    const count = Array.isArray(shape) && shape.every((d) => Number.isInteger(d) && d >= 0)
      ? shape.reduce((a, b) => a * b, 1) : NaN;
    const [begin, end] = Array.isArray(offsets) ? offsets : [];
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || end > dataLen || end - begin !== 4 * count) {
      throw new Error(`tensor ${name}: shape ${JSON.stringify(shape)} and offsets ${JSON.stringify(offsets)} do ` +
        `not fit the ${dataLen} data bytes`);
    }
    // slice() copies, so the array is aligned whatever the header length
    tensors[name] = { shape, data: new Float32Array(u8.slice(dataStart + begin, dataStart + end).buffer) };
  }
  return { metadata, tensors };
}

/** { name: {shape, data: Float32Array} } and string metadata -> safetensors bytes (header padded to 8 bytes). */
export function writeSafetensors(tensors, metadata = {}) {
  const header = { __metadata__: metadata };
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    if (!(data instanceof Float32Array)) throw new TypeError(`tensor ${name} must be a Float32Array`);
    if (shape.reduce((a, b) => a * b, 1) !== data.length) {
      throw new RangeError(`tensor ${name} has ${data.length} values but shape ${JSON.stringify(shape)}`);
    }
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((new TextEncoder().encode(json).length) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const { data } of Object.values(tensors)) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  return out;
}
