import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readSafetensors, writeSafetensors } from '../src/safetensors.js';
import { State } from '../src/state.js';
import { SPECS } from './fake.mjs';

function randomState(seed = 1) {
  let x = seed;
  const next = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5;
  return new State([Float32Array.from({ length: 1 }, next), Float32Array.from({ length: 1 }, next)], SPECS, 'f00d');
}

test('safetensors round trip keeps names, shapes, values and metadata; the header is 8-byte aligned', () => {
  const tensors = { b: { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, -6.5]) },
    a: { shape: [1], data: Float32Array.of(Math.PI) } };
  const bytes = writeSafetensors(tensors, { k: 'v' });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLen % 8, 0);
  const back = readSafetensors(bytes);
  assert.deepEqual(back.metadata, { k: 'v' });
  assert.deepEqual(back.tensors.b, tensors.b);
  assert.deepEqual(back.tensors.a, tensors.a);
});

test('a Node Buffer from a shared pool reads as its own bytes', () => {
  const state = randomState(3);
  const pooled = Buffer.concat([Buffer.from('padding!'), Buffer.from(state.save())]).subarray(8);
  assert.deepEqual(State.load(pooled, SPECS, 'f00d').tensors, state.tensors);
});

test('corrupt safetensors are refused with the reason', () => {
  const bytes = writeSafetensors({ a: { shape: [4], data: new Float32Array(4) } });
  assert.throws(() => readSafetensors(bytes.subarray(0, 5)), /less than its header/);
  assert.throws(() => readSafetensors(bytes.subarray(0, bytes.length - 4)), /do not fit/);
  const huge = Uint8Array.from(bytes);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  assert.throws(() => readSafetensors(huge), /header of/);
  const f16 = new TextEncoder().encode(JSON.stringify({ a: { dtype: 'F16', shape: [1], data_offsets: [0, 2] } }));
  const file = new Uint8Array(8 + f16.length + 2);
  new DataView(file.buffer).setBigUint64(0, BigInt(f16.length), true);
  file.set(f16, 8);
  assert.throws(() => readSafetensors(file), /F32 only/);
});

test('a saved state loads back equal; unknown metadata keys are ignored', () => {
  const state = randomState();
  const back = State.load(state.save(), SPECS, 'f00d');
  assert.deepEqual(back.tensors, state.tensors);
  const { metadata, tensors } = readSafetensors(state.save());
  const extra = writeSafetensors(tensors, { ...metadata, checksum: 'whatever', note: 'x' });
  assert.deepEqual(State.load(extra, SPECS, 'f00d').tensors, state.tensors);
});

test('a state of another model, format or shape is refused', () => {
  const bytes = randomState().save();
  assert.throws(() => State.load(bytes, SPECS, 'beef'), /another model/);
  const { metadata, tensors } = readSafetensors(bytes);
  assert.throws(() => State.load(writeSafetensors(tensors, { ...metadata, format_version: '9' }), SPECS, 'f00d'),
    /state format 9/);
  assert.throws(() => State.load(writeSafetensors(tensors, {}), SPECS, 'f00d'), /not a seqedge state/);
  const wrong = { ...tensors, 'state.1': { shape: [1, 1], data: new Float32Array(1) } };
  assert.throws(() => State.load(writeSafetensors(wrong, metadata), SPECS, 'f00d'), /shape \[1,1\], expected \[1,1,1\]/);
  const { 'state.0': _, ...missing } = tensors;
  assert.throws(() => State.load(writeSafetensors(missing, metadata), SPECS, 'f00d'), /lacks state\.0/);
});
