import assert from 'node:assert/strict';
import { mkdtemp, mkdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { ArtifactError, checkRelativePath, parseManifest, readVerified, selectVariant, sha256Hex } from '../src/manifest.js';
import { artifactReader } from '../src/node.js';
import { Session } from '../src/session.js';
import { fakeArtifact, fakeOrt } from './fake.mjs';

test('sha256 is the hex digest', async () => {
  assert.equal(await sha256Hex(new TextEncoder().encode('abc')),
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});

test('a manifest of another format, version or with missing fields is refused', async () => {
  const { manifest } = await fakeArtifact();
  assert.equal(parseManifest(JSON.stringify(manifest)).chunk_size, 4);
  assert.throws(() => parseManifest('{not json'), /not valid JSON/);
  assert.throws(() => parseManifest('{"format": "other"}'), /not a seqedge artifact/);
  assert.throws(() => parseManifest(JSON.stringify({ ...manifest, format_version: 2 })), /format version 2/);
  const { state, ...noState } = manifest;
  assert.throws(() => parseManifest(JSON.stringify(noState)), /lacks field\(s\) \["state"\]/);
  assert.throws(() => parseManifest(JSON.stringify({ ...manifest, chunk_size: 0 })), /chunk_size/);
  const badSpec = [{ ...state[0], shape: ['batch', -1] }];
  assert.throws(() => parseManifest(JSON.stringify({ ...manifest, state: badSpec })), /state spec/);
});

test('variants are chosen by target and quantization, with the choices named on a miss', async () => {
  const { manifest } = await fakeArtifact();
  assert.equal(selectVariant(manifest, 'onnx-ort').name, 'onnx-ort/fp32');
  assert.equal(selectVariant(manifest, 'onnx-ort', 'none').tag, 'fp32');
  assert.throws(() => selectVariant(manifest, 'onnx'), /no "onnx" export \(it has \["onnx-ort"\]\)/);
  assert.throws(() => selectVariant(manifest, 'onnx-ort', 'int8'), /no onnx-ort\/int8 variant \(it has \["fp32"\]\)/);
});

test('a tampered, truncated or missing graph is refused before ONNX Runtime sees it', async () => {
  const { manifest, files, readFile } = await fakeArtifact();
  const variant = selectVariant(manifest, 'onnx-ort');
  assert.deepEqual(await readVerified(variant, 'step', readFile), files.get('onnx-ort/fp32/step.onnx'));
  files.set('onnx-ort/fp32/step.onnx', new TextEncoder().encode('stex'));
  await assert.rejects(readVerified(variant, 'step', readFile), /does not match the sha256/);
  files.set('onnx-ort/fp32/chunk.onnx', new TextEncoder().encode('chun'));
  await assert.rejects(readVerified(variant, 'chunk', readFile), /does not match the sha256/);
  files.delete('onnx-ort/fp32/step.onnx');
  await assert.rejects(readVerified(variant, 'step', readFile), /missing from the artifact/);
  await assert.rejects(readVerified(variant, 'program', readFile), /has no "program" file/);
  const created = [];
  const ort = fakeOrt();
  ort.InferenceSession.create = async () => created.push(1);
  await assert.rejects(Session.open({ ort, manifest, readFile }), ArtifactError);
  assert.deepEqual(created, []);
});

test('paths that leave the artifact directory are refused', async () => {
  for (const path of ['../secret', '/etc/passwd', 'a/../../b', 'a//b', './a', 'a\\..\\b', 'C:/x', '', 7]) {
    assert.throws(() => checkRelativePath(path), /not a relative path inside the artifact/, String(path));
  }
  assert.equal(checkRelativePath('onnx-ort/fp32/step.onnx'), 'onnx-ort/fp32/step.onnx');
  const { manifest, readFile } = await fakeArtifact();
  manifest.variants[0].files.step.path = '../../etc/passwd';
  await assert.rejects(Session.open({ ort: fakeOrt(), manifest, readFile }), /not a relative path/);
});

test('the Node reader refuses a symlink out of the artifact and reads files inside it', async () => {
  const root = await mkdtemp(join(tmpdir(), 'seqedge-web-'));
  await mkdir(join(root, 'art', 'onnx-ort'), { recursive: true });
  await writeFile(join(root, 'outside.onnx'), 'secret');
  await writeFile(join(root, 'art', 'onnx-ort', 'step.onnx'), 'step');
  await symlink(join(root, 'outside.onnx'), join(root, 'art', 'onnx-ort', 'chunk.onnx'));
  const read = await artifactReader(join(root, 'art'));
  assert.equal(new TextDecoder().decode(await read('onnx-ort/step.onnx')), 'step');
  await assert.rejects(read('onnx-ort/chunk.onnx'), /outside the artifact directory/);
  await assert.rejects(read('../outside.onnx'), /not a relative path/);
  await assert.rejects(artifactReader(join(root, 'nope')), /does not exist/);
});
