// Node.js side of the runner: the artifact read from disk (paths confined to its directory) and run on
// onnxruntime-node.

import { readFile, realpath } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';

import { ArtifactError, MANIFEST_FILE, checkRelativePath, parseManifest } from './manifest.js';
import { Session } from './session.js';

/** A reader of files inside `root`; refuses a path that leaves it (`..`, absolute, or through a symlink). */
export async function artifactReader(root) {
  const base = await realpath(root).catch(() => {
    throw new ArtifactError(`artifact directory ${root} does not exist`);
  });
  return async (relative) => {
    const target = await realpath(join(base, checkRelativePath(relative)));
    if (!target.startsWith(base + sep)) {
      throw new ArtifactError(`${relative} resolves to ${target}, outside the artifact directory ${base}; ` +
        'refusing to read it');
    }
    return new Uint8Array(await readFile(target));
  };
}

/** Parsed manifest.json of the artifact directory `root`. */
export async function readManifest(root) {
  const path = join(root, MANIFEST_FILE);
  const text = await readFile(path, 'utf-8').catch(() => {
    throw new ArtifactError(`${path} is missing: ${root} is not a seqedge artifact (create one with \`seqedge export\`)`);
  });
  return parseManifest(text, path);
}

/** The onnxruntime binding and execution providers of a backend: `node` (native CPU) or `web` (the WASM build). */
async function backend(name, threads) {
  if (name === 'node') {
    return { ort: await import('onnxruntime-node'), executionProviders: ['cpu'],
      sessionOptions: threads ? { intraOpNumThreads: threads } : {} };
  }
  if (name === 'web') {
    const ort = await import('onnxruntime-web');
    ort.env.wasm.numThreads = threads || 1;
    return { ort, executionProviders: ['wasm'], sessionOptions: {} };
  }
  throw new RangeError(`backend must be node or web, got ${JSON.stringify(name)}`);
}

/**
 * Session for `target`/`quantization` of the artifact at `root`, on onnxruntime-node (`backend: 'node'`) or on
 * onnxruntime-web's WASM build (`backend: 'web'`: the browser's kernels, run in Node).
 */
export async function openArtifact(root, { target = 'onnx-ort', quantization = null, threads = 0,
  backend: name = 'node' } = {}) {
  const { ort, executionProviders, sessionOptions } = await backend(name, threads);
  const manifest = await readManifest(root);
  const filePath = name === 'node' ? (path) => join(resolve(root), checkRelativePath(path)) : null;
  return Session.open({ ort, manifest, readFile: await artifactReader(root), target, quantization,
    executionProviders, sessionOptions, filePath });
}
