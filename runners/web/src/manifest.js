// manifest.json of a seqedge artifact (export/manifest.py): parsed, checked, and its files verified by sha256
// before a runtime sees them. A manifest's paths, sizes and shapes are checked, never trusted.

export const MANIFEST_FILE = 'manifest.json';
export const ARTIFACT_FORMAT = 'seqedge-artifact';
export const ARTIFACT_FORMAT_VERSION = 1;
const REQUIRED = ['model', 'fingerprint', 'state', 'chunk_size', 'variants'];

/** An artifact that is missing, foreign, of another format version, or tampered with. */
export class ArtifactError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ArtifactError';
  }
}

/** Parse and check the text of manifest.json (format, version, required fields, state specs). */
export function parseManifest(text, where = MANIFEST_FILE) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new ArtifactError(`${where} is not valid JSON: ${err.message}`);
  }
  if (data === null || typeof data !== 'object' || data.format !== ARTIFACT_FORMAT) {
    throw new ArtifactError(`${where} is not a seqedge artifact manifest (create one with \`seqedge export\`)`);
  }
  if (data.format_version !== ARTIFACT_FORMAT_VERSION) {
    throw new ArtifactError(`${where} has artifact format version ${data.format_version}, this runner reads ` +
      `version ${ARTIFACT_FORMAT_VERSION}; re-export with a matching seqedge`);
  }
  const missing = REQUIRED.filter((k) => !(k in data));
  if (missing.length) throw new ArtifactError(`${where} lacks field(s) ${JSON.stringify(missing)}`);
  if (!Number.isInteger(data.chunk_size) || data.chunk_size < 1) {
    throw new ArtifactError(`${where} has chunk_size ${data.chunk_size}; expected a positive integer`);
  }
  if (!Number.isInteger(data.model.vocab_size) || data.model.vocab_size < 1) {
    throw new ArtifactError(`${where} has model.vocab_size ${data.model.vocab_size}; expected a positive integer`);
  }
  checkStateSpecs(data.state, where);
  return data;
}

function checkStateSpecs(specs, where) {
  if (!Array.isArray(specs) || specs.length === 0) throw new ArtifactError(`${where} has no state specs`);
  for (const spec of specs) {
    const dims = spec && Array.isArray(spec.shape) ? spec.shape : [];
    const ok = typeof spec.name === 'string' && spec.dtype === 'float32' && dims[0] === 'batch' &&
      dims.slice(1).every((d) => Number.isInteger(d) && d > 0);
    if (!ok) {
      throw new ArtifactError(`${where} has a state spec this runner cannot hold: ${JSON.stringify(spec)} ` +
        "(expected float32 with shape ['batch', positive ints...])");
    }
  }
}

/** Shape of a state spec at batch 1. */
export function specShape(spec) {
  return [1, ...spec.shape.slice(1)];
}

/** The variant of `target` at `quantization` (fp32/none, fp16, int8, int4); default fp32, else the only one. */
export function selectVariant(manifest, target, quantization = null) {
  const tagOf = (v) => (v.quantization?.scheme ?? 'none') === 'none' ? 'fp32' : v.quantization.scheme;
  const found = manifest.variants.filter((v) => v.target === target);
  if (!found.length) {
    const have = [...new Set(manifest.variants.map((v) => v.target))].sort();
    throw new ArtifactError(`the artifact has no ${JSON.stringify(target)} export (it has ${JSON.stringify(have)}); ` +
      `run \`seqedge export --target ${target}\``);
  }
  const tags = found.map(tagOf).sort();
  let match;
  if (quantization !== null) {
    const tag = quantization === 'none' ? 'fp32' : quantization;
    match = found.find((v) => tagOf(v) === tag);
    if (!match) throw new ArtifactError(`the artifact has no ${target}/${tag} variant (it has ${JSON.stringify(tags)})`);
  } else {
    match = found.find((v) => tagOf(v) === 'fp32') ?? (found.length === 1 ? found[0] : null);
    if (!match) {
      throw new ArtifactError(`the artifact has several ${target} variants ${JSON.stringify(tags)}; choose one`);
    }
  }
  return { ...match, tag: tagOf(match), name: `${target}/${tagOf(match)}` };
}

/** A file path from the manifest, refused unless it is a plain relative path inside the artifact. */
export function checkRelativePath(path) {
  const parts = typeof path === 'string' ? path.split('/') : [];
  const bad = !parts.length || /[\\:\0]/.test(path) ||
    parts.some((p) => p === '' || p === '.' || p === '..');
  if (bad) {
    throw new ArtifactError(`the manifest names the file ${JSON.stringify(path)}, which is not a relative path ` +
      'inside the artifact directory; the manifest is corrupt or hostile: re-export the artifact');
  }
  return path;
}

/** Lowercase hex sha256 of bytes (WebCrypto: the same call in browsers and Node). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Bytes of a variant's file (`role`: step, chunk), read with `readFile(relativePath) -> Uint8Array` and checked
 * against the manifest's size and sha256.
 */
export async function readVerified(variant, role, readFile) {
  const record = variant.files?.[role];
  if (!record) {
    throw new ArtifactError(`${variant.name} has no ${JSON.stringify(role)} file ` +
      `(it has ${JSON.stringify(Object.keys(variant.files ?? {}).sort())})`);
  }
  const path = checkRelativePath(record.path);
  let bytes;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new ArtifactError(`${path} is missing from the artifact (${err.message}); re-run \`seqedge export\``);
  }
  if ((Number.isInteger(record.bytes) && bytes.byteLength !== record.bytes) ||
      (await sha256Hex(bytes)) !== record.sha256) {
    throw new ArtifactError(`${path} does not match the sha256 in ${MANIFEST_FILE} (truncated or modified); ` +
      're-run `seqedge export`');
  }
  return bytes;
}
