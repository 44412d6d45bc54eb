#!/usr/bin/env node
// Command line of the Node.js runner: stream a completion, or run a fixed token stream and dump its logits.
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { openArtifact } from './src/node.js';
import { State } from './src/state.js';
import { EOS_ID, StreamDecoder, encode } from './src/tokenizer.js';

const USAGE = `usage: node cli.mjs ARTIFACT [options]

Generate (default): stream a completion of --prompt to stdout, tokens/s to stderr.
  -p, --prompt TEXT        prompt (bytes after BOS; default "")
  -n, --max-new-tokens N   tokens to generate (default 100)
  --temperature T          0 = greedy (default 0); --top-k K (0 = off), --top-p P (1 = off), --seed S
Parity: --tokens FILE (JSON list of ids) runs them as prefill of --prefill P tokens, then one step each, and
  writes the logits [T, V] as raw little-endian float32 to --dump-logits FILE.
Both: --state-in FILE starts from a saved state, --state-out FILE saves the final state (safetensors);
  --target onnx-ort|onnx (default onnx-ort), --quantization fp32|int8|... (default fp32), --threads N,
  --backend node|web (onnxruntime-node, default; or onnxruntime-web's WASM build, the browser's kernels),
  --json prints a JSON summary instead of streaming text.`;

const OPTIONS = {
  prompt: { type: 'string', short: 'p', default: '' },
  'max-new-tokens': { type: 'string', short: 'n', default: '100' },
  temperature: { type: 'string', default: '0' },
  'top-k': { type: 'string', default: '0' },
  'top-p': { type: 'string', default: '1' },
  seed: { type: 'string' },
  tokens: { type: 'string' },
  prefill: { type: 'string', default: '0' },
  'dump-logits': { type: 'string' },
  'state-in': { type: 'string' },
  'state-out': { type: 'string' },
  target: { type: 'string', default: 'onnx-ort' },
  backend: { type: 'string', default: 'node' },
  quantization: { type: 'string' },
  threads: { type: 'string', default: '0' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
};

function number(args, name, parse = Number) {
  const value = parse(args[name]);
  if (!Number.isFinite(value)) throw new Error(`--${name} must be a number, got ${JSON.stringify(args[name])}`);
  return value;
}

async function runStream(session, args, state) {
  const tokens = JSON.parse(await readFile(args.tokens, 'utf-8'));
  const prefill = number(args, 'prefill', (v) => Number.parseInt(v, 10));
  if (!Array.isArray(tokens) || prefill < 0 || prefill > tokens.length) {
    throw new Error(`--tokens must hold a JSON list and --prefill lie in [0, ${tokens.length}]`);
  }
  const V = session.vocabSize;
  const logits = new Float32Array(tokens.length * V);
  const started = performance.now();
  if (prefill) {
    const out = await session.prefill(tokens.slice(0, prefill), state);
    logits.set(out.logits, 0);
    state = out.state;
  }
  for (let t = prefill; t < tokens.length; t++) {
    const out = await session.step(tokens[t], state);
    logits.set(out.logits, t * V);
    state = out.state;
  }
  if (args['dump-logits']) await writeFile(args['dump-logits'], new Uint8Array(logits.buffer));
  return { state, summary: { tokens: tokens.length, prefill, seconds: (performance.now() - started) / 1000 } };
}

async function runGenerate(session, args, state) {
  const n = number(args, 'max-new-tokens', (v) => Number.parseInt(v, 10));
  const sampling = { temperature: number(args, 'temperature'), topK: number(args, 'top-k', (v) => Number.parseInt(v, 10)),
    topP: number(args, 'top-p'), seed: args.seed === undefined ? null : number(args, 'seed', (v) => Number.parseInt(v, 10)) };
  const prompt = encode(args.prompt, { addBos: true });
  const decoder = new StreamDecoder();
  const generated = [];
  let text = '';
  const started = performance.now();
  let firstAt = null;
  for await (const token of session.generate(prompt, n, sampling, { stopTokens: [EOS_ID], state })) {
    firstAt ??= performance.now();
    generated.push(token);
    const piece = decoder.push(token);
    text += piece;
    if (!args.json) process.stdout.write(piece);
  }
  text += decoder.flush();
  const end = performance.now();
  const decodeTokens = Math.max(generated.length - 1, 0);
  const summary = { prompt_tokens: prompt.length, tokens: generated, text,
    prefill_seconds: ((firstAt ?? end) - started) / 1000,
    decode_tokens_per_s: decodeTokens && firstAt ? decodeTokens / ((end - firstAt) / 1000) : null };
  if (!args.json) process.stderr.write(`\n[${summary.decode_tokens_per_s?.toFixed(1)} tokens/s]\n`);
  return { state: null, summary };
}

async function main() {
  const { values: args, positionals } = parseArgs({ options: OPTIONS, allowPositionals: true });
  if (args.help || positionals.length !== 1) {
    console.log(USAGE);
    return args.help ? 0 : 2;
  }
  if (args['state-out'] && !args.tokens) {
    throw new Error('--state-out needs --tokens (it saves the state after a fixed token stream)');
  }
  const session = await openArtifact(positionals[0], { target: args.target, quantization: args.quantization ?? null,
    threads: number(args, 'threads', (v) => Number.parseInt(v, 10)), backend: args.backend });
  let state = session.initState();
  if (args['state-in']) state = State.load(await readFile(args['state-in']), session.specs, session.fingerprint);
  const { state: final, summary } = args.tokens ? await runStream(session, args, state) : await runGenerate(session, args, state);
  if (args['state-out']) await writeFile(args['state-out'], final.save());
  if (args.json) console.log(JSON.stringify({ variant: session.variant.name, ...summary }));
  await session.release();
  return 0;
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(`seqedge-web: error: ${err.message}`);
  process.exitCode = 2;
});
