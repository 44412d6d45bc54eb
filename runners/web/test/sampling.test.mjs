import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PCG64 } from '../src/pcg64.js';
import { Sampler, argmax, filteredProbs, samplingConfig } from '../src/sampling.js';

// Golden values from numpy 2 (`np.random.default_rng(seed).random()` and seqedge.sampling.Sampler), the reference
// this sampler reproduces so that a seed picks the same tokens in Python and JavaScript.
const NUMPY_RANDOM = {
  0: [0.6369616873214543, 0.2697867137638703, 0.04097352393619469],
  1234: [0.9766997666981422, 0.3801957350196178, 0.9232462337639554],
  1099511627783: [0.829812891829413, 0.25530515834910417, 0.15379071585298754],
};
const LOGITS = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i * 1.7) * 3);
const NUMPY_SAMPLES = [
  [{ temperature: 1, seed: 7 }, [23, 35, 31, 8, 12, 34, 1, 34, 31, 19, 12, 12, 9, 16, 19, 23]],
  [{ temperature: 0.7, topK: 5, seed: 11 }, [1, 23, 23, 1, 1, 38, 1, 1, 38, 23, 12, 23, 34, 12, 1, 34]],
  [{ temperature: 1.3, topP: 0.8, seed: 2 ** 40 + 3 }, [31, 38, 19, 1, 8, 23, 27, 23, 5, 27, 8, 38, 12, 30, 1, 8]],
];

test('PCG64 seeded as numpy draws numpy default_rng doubles', () => {
  for (const [seed, expected] of Object.entries(NUMPY_RANDOM)) {
    const rng = new PCG64(Number(seed));
    assert.deepEqual(expected.map(() => rng.random()), expected);
  }
});

test('seeded sampling picks the tokens seqedge.sampling picks', () => {
  for (const [config, expected] of NUMPY_SAMPLES) {
    const sampler = new Sampler(samplingConfig(config));
    assert.deepEqual(expected.map(() => sampler.sample(LOGITS)), expected, JSON.stringify(config));
  }
});

test('greedy is the first maximum, whatever the seed', () => {
  const logits = Float32Array.from([0.5, 3, -1, 3, 2]);
  assert.equal(argmax(logits), 1);
  for (const seed of [0, 1, 99]) assert.equal(new Sampler(samplingConfig({ seed })).sample(logits), 1);
});

test('top-k keeps exactly the k largest and renormalises', () => {
  const p = filteredProbs(LOGITS, { temperature: 0.9, topK: 7, topP: 1 });
  const kept = [...p.keys()].filter((i) => p[i] > 0);
  const top7 = [...LOGITS.keys()].sort((a, b) => LOGITS[b] - LOGITS[a]).slice(0, 7).sort((a, b) => a - b);
  assert.deepEqual(kept, top7);
  assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
});

test('top-p keeps the smallest head whose mass reaches p, always the top token', () => {
  const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
  const p = filteredProbs(logits, { temperature: 1, topK: 0, topP: 0.75 });
  assert.ok(p[0] > 0 && p[1] > 0 && p[2] === 0 && p[3] === 0);
  assert.ok(Math.abs(p[0] - 0.625) < 1e-6);
  const tiny = filteredProbs(logits, { temperature: 1, topK: 0, topP: 1e-9 });
  assert.deepEqual(Array.from(tiny), [1, 0, 0, 0]);
});

test('draws follow the filtered distribution', () => {
  const config = samplingConfig({ temperature: 1.5, topK: 10, seed: 5 });
  const p = filteredProbs(LOGITS, config);
  const sampler = new Sampler(config);
  const counts = new Float64Array(LOGITS.length);
  const N = 20000;
  for (let i = 0; i < N; i++) counts[sampler.sample(LOGITS)] += 1;
  for (let i = 0; i < p.length; i++) {
    const sd = Math.sqrt(N * p[i] * (1 - p[i]));
    assert.ok(Math.abs(counts[i] - N * p[i]) <= 5 * sd + 1e-9, `token ${i}: ${counts[i]} vs ${N * p[i]}`);
  }
});

test('same seed repeats the stream, another seed does not', () => {
  const draw = (seed) => {
    const s = new Sampler(samplingConfig({ temperature: 2, seed }));
    return Array.from({ length: 32 }, () => s.sample(LOGITS));
  };
  assert.deepEqual(draw(3), draw(3));
  assert.notDeepEqual(draw(3), draw(4));
});

test('bad sampling settings are refused naming the field', () => {
  assert.throws(() => samplingConfig({ temperature: -1 }), /temperature/);
  assert.throws(() => samplingConfig({ topK: 1.5 }), /topK/);
  assert.throws(() => samplingConfig({ topP: 0 }), /topP/);
  assert.throws(() => samplingConfig({ topP: 1.2 }), /topP/);
  assert.throws(() => samplingConfig({ seed: -3 }), /seed/);
});
