// A loaded artifact on an onnxruntime JavaScript binding (onnxruntime-web or onnxruntime-node, handed in as
// `ort`): init_state / step / prefill / generate with the state carried in JavaScript, as seqedge's Session.

import { readVerified, selectVariant, specShape } from './manifest.js';
import { Sampler, samplingConfig } from './sampling.js';
import { State } from './state.js';
import { checkTokenizer, encode } from './tokenizer.js';

export class Session {
  constructor({ ort, manifest, variant, graphs, executionProviders }) {
    this.ort = ort;
    this.manifest = manifest;
    this.variant = variant;
    this.graphs = graphs;                      // entry point ("step", "chunk") -> InferenceSession
    this.executionProviders = executionProviders;
    this.specs = manifest.state;
    this.fingerprint = manifest.fingerprint;
    this.vocabSize = manifest.model.vocab_size;
    this.chunkSize = manifest.chunk_size;
  }

  /**
   * Open `target`/`quantization` of a parsed manifest. `readFile(relativePath) -> Uint8Array` reads the artifact
   * (fs in Node, fetch in a browser); each graph is checked against its sha256 before ONNX Runtime sees it.
   * `filePath(relativePath) -> absolute path`, in Node only, lets onnxruntime-node open graphs whose weights
   * are an external-data file.
   */
  static async open({ ort, manifest, readFile, target = 'onnx-ort', quantization = null,
    executionProviders = ['cpu'], sessionOptions = {}, filePath = null }) {
    checkTokenizer(manifest.tokenizer);
    const variant = selectVariant(manifest, target, quantization);
    // the weights both graphs share (an ONNX external-data file beside them), checked once
    const weights = variant.files?.weights ? await readVerified(variant, 'weights', readFile) : null;
    // errors only by default: ONNX Runtime warns on every chunk graph that its optional `logits_from` input has a
    // default (an initializer of the same name), which is how the graph makes it optional
    const options = { logSeverityLevel: 3, ...sessionOptions, executionProviders };
    if (weights) options.externalData = [{ path: variant.files.weights.path.split('/').pop(), data: weights }];
    const graphs = {};
    for (const entry of ['step', 'chunk']) {
      const bytes = await readVerified(variant, entry, readFile);
      // onnxruntime-node takes no external data from memory: given `filePath(relativePath)`, it opens the checked
      // graph from disk and finds the weights beside it
      const source = weights && filePath ? filePath(variant.files[entry].path) : bytes;
      graphs[entry] = await ort.InferenceSession.create(source, options);
      checkGraphNames(graphs[entry], entry, manifest.state, variant.name);
    }
    return new Session({ ort, manifest, variant, graphs, executionProviders });
  }

  initState() {
    return State.zeros(this.specs, this.fingerprint);
  }

  checkTokens(tokens) {
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
        throw new RangeError(`token ids must be integers in [0, ${this.vocabSize}), got ${t}`);
      }
    }
  }

  checkState(state) {
    if (!(state instanceof State)) throw new TypeError('state must be a State (from initState or State.load)');
    if (state.fingerprint !== this.fingerprint) {
      throw new Error(`state belongs to another model (fingerprint ${state.fingerprint}, expected ${this.fingerprint})`);
    }
  }

  /** One call of `entry` on tokens [T] -> { logits: Float32Array [T * V], state }. */
  async run(entry, tokens, state) {
    const ort = this.ort;
    const shape = entry === 'step' ? [1] : [1, tokens.length];
    const feeds = { tokens: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), shape) };
    this.specs.forEach((spec, i) => {
      feeds[spec.name] = new ort.Tensor('float32', state.tensors[i], specShape(spec));
    });
    const out = await this.graphs[entry].run(feeds);
    const logits = out.logits.data;
    if (logits.length !== tokens.length * this.vocabSize) {
      throw new Error(`${this.variant.name} ${entry} returned ${logits.length} logits for ${tokens.length} tokens`);
    }
    const tensors = this.specs.map((spec, i) => out[`new_${spec.name}`].data);
    return { logits, state: new State(tensors, this.specs, this.fingerprint) };
  }

  /** One token -> { logits: Float32Array [V], state }. The input state is not modified. */
  async step(token, state) {
    this.checkTokens([token]);
    this.checkState(state);
    return this.run('step', [token], state);
  }

  /**
   * Any number of tokens -> { logits: Float32Array [T * V], state }: floor(T / C) chunk calls, then the rest as
   * steps (exact: no padding ever touches the state).
   */
  async prefill(tokens, state) {
    this.checkTokens(tokens);
    this.checkState(state);
    const C = this.chunkSize, V = this.vocabSize, T = tokens.length;
    const logits = new Float32Array(T * V);
    for (const [entry, start, end] of prefillPlan(T, C)) {
      const out = await this.run(entry, tokens.slice(start, end), state);
      logits.set(out.logits, start * V);
      state = out.state;
    }
    return { logits, state };
  }

  /**
   * Yields up to `maxNewTokens` tokens continuing `prompt` (ids, or text encoded as bytes after BOS); stops after
   * a token of `stopTokens`. `sampling`: { temperature, topK, topP, seed } as samplingConfig.
   */
  async *generate(prompt, maxNewTokens, sampling = {}, { stopTokens = [], state = null } = {}) {
    const ids = typeof prompt === 'string' ? encode(prompt, { addBos: true }) : prompt;
    if (!ids.length) throw new RangeError('prompt must contain at least one token');
    if (!(Number.isInteger(maxNewTokens) && maxNewTokens >= 0)) {
      throw new RangeError(`maxNewTokens must be an integer >= 0, got ${maxNewTokens}`);
    }
    const sampler = new Sampler(samplingConfig(sampling));
    const V = this.vocabSize;
    let { logits, state: current } = await this.prefill(ids, state ?? this.initState());
    let last = logits.subarray(logits.length - V);
    for (let i = 0; i < maxNewTokens; i++) {
      const token = sampler.sample(last);
      yield token;
      if (stopTokens.includes(token) || i === maxNewTokens - 1) return;     // no step whose logits go unused
      ({ logits: last, state: current } = await this.step(token, current));
    }
  }

  async release() {
    for (const graph of Object.values(this.graphs)) await graph.release();
  }
}

/** [entry, start, end) calls that prefill T tokens with chunk size C: floor(T / C) chunks, then steps. */
export function prefillPlan(T, C) {
  const plan = [];
  const full = T - (T % C);
  for (let start = 0; start < full; start += C) plan.push(['chunk', start, start + C]);
  for (let t = full; t < T; t++) plan.push(['step', t, t + 1]);
  return plan;
}

function checkGraphNames(graph, entry, specs, name) {
  const inputs = ['tokens', ...specs.map((s) => s.name)];
  const outputs = ['logits', ...specs.map((s) => `new_${s.name}`)];
  const same = (a, b) => a.length === b.length && a.every((x) => b.includes(x));
  if (!same(graph.inputNames, inputs) || !same(graph.outputNames, outputs)) {
    throw new Error(`${name}/${entry}.onnx has inputs ${JSON.stringify(graph.inputNames)} and outputs ` +
      `${JSON.stringify(graph.outputNames)}; the manifest's state needs ${JSON.stringify(inputs)} -> ` +
      `${JSON.stringify(outputs)}: the graph and manifest do not belong together, re-export the artifact`);
  }
}
