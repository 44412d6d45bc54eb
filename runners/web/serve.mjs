#!/usr/bin/env node
// Serves the browser demo locally: the page, the shared JS module, onnxruntime-web's files and one artifact.
// Cross-origin isolation headers let onnxruntime-web use WASM threads (SharedArrayBuffer).
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.json': 'application/json', '.wasm': 'application/wasm', '.css': 'text/css', '.map': 'application/json' };
const HEADERS = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cache-Control': 'no-store' };

/** URL prefix -> folder served under it; nothing outside these folders is ever read. */
function mounts(artifact) {
  return [['/artifact/', artifact], ['/ort/', join(HERE, 'node_modules', 'onnxruntime-web', 'dist')],
    ['/src/', join(HERE, 'src')], ['/', join(HERE, 'web')]];
}

async function resolve(urlPath, table) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded === '/') decoded = '/index.html';
  const mount = table.find(([prefix]) => decoded.startsWith(prefix));
  if (!mount || decoded.includes('\0')) return null;
  const [prefix, folder] = mount;
  const parts = decoded.slice(prefix.length).split('/');
  if (parts.some((p) => p === '..' || p === '.' || p === '' || p.includes('\\'))) return null;
  try {
    const base = await realpath(folder);
    const file = await realpath(join(base, ...parts));
    return file.startsWith(base + sep) && (await stat(file)).isFile() ? file : null;
  } catch {
    return null;
  }
}

/** An http.Server for `artifact` (not yet listening). */
export function demoServer(artifact) {
  const table = mounts(artifact);
  return createServer(async (req, res) => {
    const file = req.method === 'GET' ? await resolve(new URL(req.url, 'http://x').pathname, table) : null;
    if (!file) {
      res.writeHead(404, { ...HEADERS, 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    res.writeHead(200, { ...HEADERS, 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream' });
    createReadStream(file).pipe(res);
  });
}

/** Start serving `artifact` on host:port (0: any free port); resolves to { server, url }. */
export async function startDemo(artifact, { host = '127.0.0.1', port = 8000 } = {}) {
  await stat(join(artifact, 'manifest.json')).catch(() => {
    throw new Error(`${artifact} has no manifest.json: not a seqedge artifact (create one with \`seqedge export ` +
      '--target onnx-ort --out DIR`)');
  });
  const server = demoServer(artifact);
  await new Promise((ok, fail) => server.once('error', fail).listen(port, host, ok));
  return { server, url: `http://${host}:${server.address().port}/` };
}

async function main() {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: {
    host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '8000' } } });
  if (positionals.length !== 1) {
    console.error('usage: npm run demo -- ARTIFACT [--port 8000] [--host 127.0.0.1]');
    return 2;
  }
  const { url } = await startDemo(positionals[0], { host: values.host, port: Number(values.port) });
  console.log(`seqedge web demo of ${positionals[0]} at ${url} (Ctrl-C stops it)`);
  return undefined;
}

if (process.argv[1] && (await realpath(process.argv[1])) === fileURLToPath(import.meta.url)) {
  main().then((code) => { if (code) process.exitCode = code; }, (err) => {
    console.error(`seqedge-web demo: error: ${err.message}`);
    process.exitCode = 2;
  });
}
