// The demo page: opens the served artifact with onnxruntime-web and streams completions.
// Query parameters: target (onnx-ort | onnx), quantization (fp32, int8, ...), ep (auto | wasm | webgpu).
import { parseManifest } from '/src/manifest.js';
import { Session } from '/src/session.js';
import { EOS_ID, StreamDecoder, encode } from '/src/tokenizer.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function setStatus(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

async function fetchBytes(path) {
  const res = await fetch(`/artifact/${path}`);
  if (!res.ok) throw new Error(`HTTP ${res.status} for ${path}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function hasWebGpu() {
  return Boolean(navigator.gpu && (await navigator.gpu.requestAdapter().catch(() => null)));
}

/** ONNX Runtime Web build and execution providers for the `ep` parameter. */
async function chooseBackend() {
  const ep = params.get('ep') ?? 'auto';
  if (!['auto', 'wasm', 'webgpu'].includes(ep)) throw new Error(`ep must be auto, wasm or webgpu, got ${ep}`);
  const adapter = ep !== 'wasm' && (await hasWebGpu());
  if (ep === 'webgpu' && !adapter) {
    throw new Error('ep=webgpu was asked for, but this browser offers no WebGPU adapter; use ep=wasm or ep=auto');
  }
  const webgpu = Boolean(adapter);
  const ort = await import(webgpu ? '/ort/ort.webgpu.min.mjs' : '/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  return { ort, executionProviders: webgpu ? ['webgpu', 'wasm'] : ['wasm'] };
}

async function open() {
  const manifest = parseManifest(new TextDecoder().decode(await fetchBytes('manifest.json')));
  const { ort, executionProviders } = await chooseBackend();
  const options = { ort, manifest, readFile: fetchBytes, target: params.get('target') ?? 'onnx-ort',
    quantization: params.get('quantization'), executionProviders };
  const session = await Session.open(options);
  const threads = ort.env.wasm.numThreads;
  setStatus(`${session.variant.name} on onnxruntime-web ${ort.env.versions?.web ?? ''} ` +
    `[${executionProviders.join(', ')}], ${threads} WASM thread(s)`, 'ready');
  return session;
}

function samplingFromForm() {
  return { temperature: Number($('temperature').value), topK: Number($('topk').value),
    topP: Number($('topp').value), seed: Number($('seed').value) };
}

async function generate(session) {
  $('generate').disabled = true;
  $('output').textContent = '';
  $('stats').textContent = '';
  const status = $('status').textContent;
  setStatus(status, 'running');
  const decoder = new StreamDecoder();
  const prompt = encode($('prompt').value, { addBos: true });
  const started = performance.now();
  let first = null, count = 0;
  try {
    for await (const token of session.generate(prompt, Number($('tokens').value), samplingFromForm(),
      { stopTokens: [EOS_ID] })) {
      first ??= performance.now();
      count += 1;
      $('output').textContent += decoder.push(token);
      if (count % 8 === 0) await new Promise((r) => setTimeout(r));     // let the page paint the stream
    }
    $('output').textContent += decoder.flush();
    const end = performance.now();
    const rate = count > 1 ? (count - 1) / ((end - first) / 1000) : 0;
    $('stats').textContent = `${count} tokens, prefill of ${prompt.length} tokens ${(first - started).toFixed(0)} ms, ` +
      `decode ${rate.toFixed(1)} tokens/s`;
    $('stats').dataset.tokensPerSecond = String(rate);
    $('stats').dataset.prefillMs = String(first - started);
    setStatus(status, 'done');
  } catch (err) {
    setStatus(`generation failed: ${err.message}`, 'error');
  } finally {
    $('generate').disabled = false;
  }
}

open().then((session) => {
  $('generate').disabled = false;
  $('generate').addEventListener('click', () => generate(session));
}, (err) => setStatus(`could not open the artifact: ${err.message}`, 'error'));
