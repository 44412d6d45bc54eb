// Next-token sampling on one row of logits, as seqedge/sampling.py: greedy at temperature 0, else temperature,
// top-k, top-p, then one draw from numpy's seeded generator (so a seed picks the same tokens in both languages).

import { PCG64 } from './pcg64.js';

/** temperature 0 means greedy; topK 0 and topP 1 disable those filters; seed null draws a random seed. */
export function samplingConfig({ temperature = 0, topK = 0, topP = 1, seed = null } = {}) {
  if (!(Number.isFinite(temperature) && temperature >= 0)) {
    throw new RangeError(`temperature must be >= 0, got ${temperature}`);
  }
  if (!(Number.isInteger(topK) && topK >= 0)) throw new RangeError(`topK must be an integer >= 0, got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${topP}`);
  if (seed !== null && !(Number.isSafeInteger(seed) && seed >= 0)) {
    throw new RangeError(`seed must be a non-negative integer or null, got ${seed}`);
  }
  return Object.freeze({ temperature, topK, topP, seed });
}

function randomSeed() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return words[0] * 2 ** 21 + (words[1] >>> 11);
}

/** Index of the first maximum (numpy's argmax). */
export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** Probabilities of ``logits`` after temperature, top-k and top-p (float64, sums to 1). */
export function filteredProbs(logits, { temperature, topK, topP }) {
  const V = logits.length;
  const x = Float64Array.from(logits, (v) => v / temperature);
  if (topK) {
    const kth = Float64Array.from(x).sort()[V - Math.min(topK, V)];
    for (let i = 0; i < V; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const p = Float64Array.from(x, (v) => Math.exp(v - max));
  normalize(p);
  if (topP < 1) {
    const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b);
    let cumulative = 0;
    const keep = new Uint8Array(V);
    for (const i of order) {
      cumulative += p[i];
      keep[i] = cumulative - p[i] < topP ? 1 : 0;     // the mass before this token: always keeps the top token
    }
    for (let i = 0; i < V; i++) if (!keep[i]) p[i] = 0;
    normalize(p);
  }
  return p;
}

function normalize(p) {
  let sum = 0;
  for (const v of p) sum += v;
  for (let i = 0; i < p.length; i++) p[i] /= sum;
}

/** Picks the next token from one row of logits; seeded, so a run can be repeated exactly. */
export class Sampler {
  constructor(config = samplingConfig()) {
    this.config = config;
    this.rng = new PCG64(config.seed ?? randomSeed());
  }

  sample(logits) {
    if (this.config.temperature === 0) return argmax(logits);
    const p = filteredProbs(logits, this.config);
    // numpy's Generator.choice(V, p=p): cumulative sum normalised by its last entry, one uniform, searchsorted right
    const cdf = new Float64Array(p.length);
    let sum = 0;
    for (let i = 0; i < p.length; i++) cdf[i] = sum += p[i];
    for (let i = 0; i < p.length; i++) cdf[i] /= sum;
    const u = this.rng.random();
    let lo = 0, hi = cdf.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid] > u) hi = mid; else lo = mid + 1;
    }
    return Math.min(lo, p.length - 1);
  }
}
