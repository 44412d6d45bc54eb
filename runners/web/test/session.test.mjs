import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Session, prefillPlan } from '../src/session.js';
import { V, fakeArtifact, fakeOrt } from './fake.mjs';

async function open(calls = [], options = {}) {
  const { manifest, readFile } = await fakeArtifact(options);
  return Session.open({ ort: fakeOrt(calls), manifest, readFile });
}

test('the prefill plan is floor(T / C) chunks, then one step per remaining token, covering each token once', () => {
  assert.deepEqual(prefillPlan(0, 64), []);
  assert.deepEqual(prefillPlan(64, 64), [['chunk', 0, 64]]);
  assert.deepEqual(prefillPlan(130, 64), [['chunk', 0, 64], ['chunk', 64, 128], ['step', 128, 129], ['step', 129, 130]]);
  for (let trial = 0; trial < 50; trial++) {
    const T = (trial * 37) % 101, C = 1 + (trial % 9);
    const plan = prefillPlan(T, C);
    assert.equal(plan.filter(([e]) => e === 'chunk').length, Math.floor(T / C));
    let next = 0;
    for (const [, start, end] of plan) {
      assert.equal(start, next);
      next = end;
    }
    assert.equal(next, T);
  }
});

test('prefill through chunk calls equals stepping token by token, state carried', async () => {
  const calls = [];
  const session = await open(calls);
  for (const T of [1, 3, 4, 5, 9, 12]) {
    const tokens = Array.from({ length: T }, (_, i) => (i * 7 + T) % 259 % V);
    calls.length = 0;
    const { logits, state } = await session.prefill(tokens, session.initState());
    assert.deepEqual(calls, [...Array(Math.floor(T / 4)).fill(['chunk', 4]), ...Array(T % 4).fill(['step', 1])]);
    let s = session.initState();
    for (let t = 0; t < T; t++) {
      const out = await session.step(tokens[t], s);
      assert.deepEqual(Array.from(out.logits.subarray(0, 3)), Array.from(logits.subarray(t * V, t * V + 3)));
      s = out.state;
    }
    assert.deepEqual(state.tensors, s.tensors);
  }
});

test('calls never modify the state they are given', async () => {
  const session = await open();
  const start = session.initState();
  const { state } = await session.prefill([1, 2, 3, 1, 2], start);
  await session.step(3, state);
  assert.deepEqual(Array.from(start.tensors[0]), [0]);
  assert.equal(state.tensors[1][0], 5);
});

test('bad tokens and a foreign state are refused before the graph runs', async () => {
  const calls = [];
  const session = await open(calls);
  await assert.rejects(session.step(V, session.initState()), /token ids must be integers in \[0, 4\)/);
  await assert.rejects(session.prefill([0, 1.5], session.initState()), /token ids/);
  const foreign = session.initState();
  foreign.fingerprint = 'other';
  await assert.rejects(session.step(0, foreign), /another model/);
  assert.deepEqual(calls, []);
});

test('generate prefills the prompt then feeds back each greedy token until a stop token', async () => {
  const calls = [];
  const session = await open(calls);
  const out = [];
  // logits are [a, b, token, kind]: greedy picks index 0 while a is the largest, the fake's fixed point
  for await (const token of session.generate([3, 3, 3, 3, 3], 4, { temperature: 0 })) out.push(token);
  assert.equal(out.length, 4);
  assert.deepEqual(calls, [['chunk', 4], ['step', 1], ['step', 1], ['step', 1], ['step', 1]]);   // prompt tail, 3 fed back
  const stopped = [];
  for await (const token of session.generate([3], 10, {}, { stopTokens: [out[0]] })) stopped.push(token);
  assert.deepEqual(stopped, [out[0]]);
});
