import assert from 'node:assert/strict';
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { startDemo } from '../serve.mjs';

function get(url, path) {
  return new Promise((ok, fail) => {
    request(new URL(url), { path }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; }).on('end', () => ok({ status: res.statusCode, headers: res.headers, body }));
    }).on('error', fail).end();
  });
}

test('the demo server serves the page, the module and the artifact, and nothing outside them', async () => {
  const root = await mkdtemp(join(tmpdir(), 'seqedge-serve-'));
  await mkdir(join(root, 'art'));
  await writeFile(join(root, 'art', 'manifest.json'), '{}');
  await writeFile(join(root, 'secret.txt'), 'secret');
  const { server, url } = await startDemo(join(root, 'art'), { port: 0 });
  try {
    const page = await get(url, '/');
    assert.equal(page.status, 200);
    assert.match(page.body, /seqedge in the browser/);
    assert.equal(page.headers['cross-origin-embedder-policy'], 'require-corp');
    assert.equal((await get(url, '/artifact/manifest.json')).body, '{}');
    assert.equal((await get(url, '/src/session.js')).headers['content-type'], 'text/javascript');
    for (const path of ['/artifact/../secret.txt', '/artifact/%2e%2e/secret.txt', '/artifact/..%2fsecret.txt',
      '/src/../package.json', '/artifact/nope.onnx', '/artifact/']) {
      assert.equal((await get(url, path)).status, 404, path);
    }
  } finally {
    server.close();
  }
  await assert.rejects(startDemo(join(root, 'missing'), { port: 0 }), /no manifest.json/);
});
