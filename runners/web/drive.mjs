#!/usr/bin/env node
// Drives the demo page in headless Chromium (playwright-core): serves the artifact, types a prompt, clicks
// Generate, waits for the stream to finish, prints { status, text, tokens_per_s, prefill_ms } as JSON.
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

import { startDemo } from './serve.mjs';

// The network is closed and the run must not depend on it: no background fetches, updates or sync; containers
// often have a small /dev/shm.
const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-default-apps', '--disable-sync', '--no-first-run', '--disable-domain-reliability',
  '--metrics-recording-only', '--no-pings', '--disable-dev-shm-usage'];

const OPTIONS = {
  prompt: { type: 'string', short: 'p', default: 'def main():' },
  'max-new-tokens': { type: 'string', short: 'n', default: '64' },
  query: { type: 'string', default: '' },
  chromium: { type: 'string', default: '/usr/bin/chromium' },
  timeout: { type: 'string', default: '180' },
};

async function drive(page, url, args) {
  const timeout = Number(args.timeout) * 1000;
  await page.goto(`${url}?${args.query}`);
  await page.waitForSelector('#status[data-state="ready"], #status[data-state="error"]', { timeout });
  if ((await page.getAttribute('#status', 'data-state')) === 'error') {
    return { status: await page.textContent('#status'), error: true };
  }
  const status = await page.textContent('#status');
  await page.fill('#prompt', args.prompt);
  await page.fill('#tokens', args['max-new-tokens']);
  await page.fill('#temperature', '0');
  await page.click('#generate');
  await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout });
  if ((await page.getAttribute('#status', 'data-state')) === 'error') {
    return { status: await page.textContent('#status'), error: true };
  }
  return { status, text: await page.textContent('#output'),
    tokens_per_s: Number(await page.getAttribute('#stats', 'data-tokens-per-second')),
    prefill_ms: Number(await page.getAttribute('#stats', 'data-prefill-ms')), error: false };
}

async function main() {
  const { values: args, positionals } = parseArgs({ options: OPTIONS, allowPositionals: true });
  if (positionals.length !== 1) {
    console.error('usage: node drive.mjs ARTIFACT [-p PROMPT] [-n N] [--query "ep=wasm&quantization=fp32"]');
    return 2;
  }
  const { server, url } = await startDemo(positionals[0], { port: 0 });
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_FLAGS });
  try {
    const page = await browser.newPage();
    const console_ = [];
    page.on('console', (msg) => console_.push(`${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (err) => console_.push(`pageerror: ${err.message}`));
    const result = await drive(page, url, args);
    console.log(JSON.stringify({ ...result, browser: browser.version(), console: console_ }));
    return result.error ? 1 : 0;
  } finally {
    await browser.close();
    server.close();
  }
}

main().then((code) => { process.exitCode = code; }, (err) => {
  console.error(`seqedge-web drive: error: ${err.message}`);
  process.exitCode = 2;
});
