// End-to-end test of the demo page: serves web/ on localhost, opens index.html in headless
// Chromium (WebGPU on SwiftShader), runs a small configuration with every strategy the page
// offers, checks the error against the CPU reference and saves a screenshot.
//
//   node web/e2e.mjs            (after web/pkg/ is built; web/test.sh does both)
//
// Env: CHROMIUM (default /usr/bin/chromium), E2E_TIMEOUT_MS (per run, default 240000).
// Never downloads a browser: playwright-core only drives the system Chromium.
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const OUT = `${HERE}test-results`;
const TOLERANCE = 1e-4;
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS ?? 240_000);

const server = await serve({ root: HERE, port: 0 });
const url = `http://localhost:${server.address().port}/index.html`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--enable-unsafe-webgpu',
    '--use-webgpu-adapter=swiftshader',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-default-apps',
    '--disable-extensions',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-dev-shm-usage',
  ],
});

let passed = 0;
let failed = 0;
const check = (ok, what) => {
  if (ok) passed += 1;
  else failed += 1;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
};

try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.url().endsWith('.wasm') && r.headers()['content-type'] !== 'application/wasm') {
      problems.push(`${r.url()} served as ${r.headers()['content-type']}`);
    }
  });

  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 }).catch(async () => {
    throw new Error(`the page did not get ready: ${await page.textContent('#status')} ${await page.textContent('#error')}`);
  });
  const strategies = await page.$$eval('#strategy option', (os) => os.map((o) => o.value));
  check(strategies.length >= 1, `the page offers strategies: ${strategies.join(', ')}`);

  // Small, but with odd sizes, several key tiles, a batch, causal masking and a padding mask.
  const config = { dim: 24, dimHead: 6, searches: 3, retrievals: 2, batch: 2, seq: 37,
    maskLengths: '37,20', seed: 7, repeats: 3 };
  for (const [id, value] of Object.entries(config)) await page.fill(`#${id}`, String(value));
  await page.check('#causal');
  await page.check('#prenorm');
  await page.selectOption('#limits', 'webgpu');

  for (const strategy of strategies) {
    await page.selectOption('#strategy', strategy);
    const before = Number(await page.getAttribute('#results', 'data-runs'));
    await page.click('#run');
    await page.waitForFunction(
      (n) => {
        const t = document.getElementById('results');
        return t.dataset.state === 'error' || Number(t.dataset.runs) > n;
      },
      before,
      { timeout: TIMEOUT },
    );
    const state = await page.getAttribute('#results', 'data-state');
    if (state !== 'done') {
      check(false, `${strategy}: ${await page.textContent('#error')}`);
      continue;
    }
    const r = await page.evaluate(() => window.lastReport);
    const within = r.within && r.nonFinite === 0 && r.relL2 < TOLERANCE && r.maxAbsRelative < TOLERANCE;
    check(within, `${strategy}: ${r.config}: ${r.stats}`);
    check(r.strategy === strategy && r.forwardMs !== null && r.forwardMs >= 0,
      `${strategy}: first ${r.firstMs.toFixed(1)} ms, forward ${r.forwardMs?.toFixed(2)} ms, ` +
      `reference ${r.referenceMs.toFixed(1)} ms on ${r.adapter}`);
  }
  const device = await page.textContent('#device');
  check(/adapter: /.test(device), `the page shows the adapter: ${device.split('\n')[0]}`);

  await mkdir(OUT, { recursive: true });
  await page.screenshot({ path: `${OUT}/screenshot.png`, fullPage: true });
  console.log(`screenshot: ${OUT}/screenshot.png`);
  check(problems.length === 0, `no page or console errors${problems.length ? ': ' + problems.join('; ') : ''}`);
} catch (e) {
  check(false, `e2e: ${e.stack ?? e}`);
} finally {
  await browser.close();
  server.close();
}

console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
