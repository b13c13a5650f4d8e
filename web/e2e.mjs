// End-to-end test of the demo page: serves web/ on localhost, opens index.html in headless
// Chromium (WebGPU on SwiftShader), runs a small configuration with every strategy the page
// offers and checks the error against the CPU reference; loads reference checkpoints through the
// file input and checks #error against their `output`; runs the generation demo (decode against
// the full forward); checks the JavaScript API's errors; saves a screenshot.
//
//   node web/e2e.mjs            (after web/pkg-page/ is built; web/test.sh does both)
//
// Env: CHROMIUM (default /usr/bin/chromium), E2E_TIMEOUT_MS (per run, default 240000).
// Never downloads a browser: playwright-core only drives the system Chromium.
import { mkdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { launchChromium, tally } from './harness.mjs';
import { serve } from './serve.mjs';
import { maxPool } from './heatmap.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const OUT = `${HERE}test-results`;
const TOLERANCE = 1e-4;
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS ?? 240_000);

const server = await serve({ root: HERE, port: 0 });
const url = `http://localhost:${server.address().port}/index.html`;
const browser = await launchChromium();
const { check, finish } = tally('e2e');

// The heatmaps' max pooling (pure: no page): a one-key peak among 1000 keys survives pooling to
// 480 columns with its value, every block keeps its largest value, and a small matrix is unchanged.
{
  const row = new Float32Array(1000).map((_, i) => 0.001 * ((i * 7919) % 13));
  row[777] = 0.9;
  const pooled = maxPool(row, 1, 1000, 1, 480);
  const at = Math.floor((777 * 480) / 1000);
  let blocksOk = true;
  for (let j = 0; j < 480; j += 1) {
    let most = -Infinity;
    for (let c = 0; c < 1000; c += 1) if (Math.floor((c * 480) / 1000) === j) most = Math.max(most, row[c]);
    blocksOk &&= pooled[j] === most;
  }
  const small = new Float32Array([0.25, 0.5, 0.75, 1]);
  check(pooled.length === 480 && pooled[at] === row[777] && blocksOk && maxPool(small, 2, 2, 2, 2) === small,
    `max pooling keeps a one-key peak (${pooled[at]} at column ${at} of 480) and every block's largest value`);
}

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
    throw new Error(`the page did not get ready: ${await page.textContent('#status')} ${await page.textContent('#failure')}`);
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
      check(false, `${strategy}: ${await page.textContent('#failure')}`);
      continue;
    }
    const r = await page.evaluate(() => window.lastReport);
    const within = r.within && r.nonFinite === 0 && r.relL2 < TOLERANCE && r.maxAbsRelative < TOLERANCE;
    check(within, `${strategy}: ${r.config}: ${r.stats}`);
    check(r.strategy === strategy && r.forwardMs !== null && r.forwardMs >= 0,
      `${strategy}: first ${r.firstMs.toFixed(1)} ms, forward ${r.forwardMs?.toFixed(2)} ms, ` +
      `reference ${r.referenceMs.toFixed(1)} ms on ${r.adapter}`);
  }
  // The user's own model: reference cases through the file input, checked against their output.
  const REPO = `${HERE}../`;
  const files = [
    ['tests/golden/tiny.safetensors', false],
    ['tests/golden/padding_mask.safetensors', false],
    ['tests/golden/causal.safetensors', true],
    ['tests/golden-variants/keras/k01_defaults.safetensors', false],
  ];
  const loadFile = async (file, causal) => {
    await page.setChecked('#load-causal', causal);
    const before = Number(await page.getAttribute('#case-result', 'data-finished'));
    await page.setInputFiles('#checkpoint', file);
    // data-finished counts runs that ended, in success (data-state "done") or not ("error").
    await page.waitForFunction(
      (n) => Number(document.getElementById('case-result').dataset.finished) > n,
      before,
      { timeout: TIMEOUT },
    );
    return page.getAttribute('#case-result', 'data-state');
  };
  // A bad file is an error message, not a crash (first, so the screenshot shows a good one).
  {
    const state = await loadFile({ name: 'bad.safetensors', mimeType: 'application/octet-stream',
      buffer: Buffer.from('this is not a checkpoint') }, false);
    const failure = await page.textContent('#case-failure');
    check(state === 'error' && failure.length > 0, `a bad file is reported: ${failure}`);
  }

  // A Keras .weights.h5 holds no case: the page runs it on a random input and says so.
  {
    const file = 'tests/golden-variants/keras/k02_prenorm.weights.h5';
    const state = await loadFile(`${REPO}${file}`, false);
    const stats = await page.textContent('#case-stats');
    check(state === 'done' && /^[-0-9.e]+, /.test(stats) && (await page.textContent('#error')).startsWith('–'),
      `${file}: ${state === 'done' ? `output ${await page.textContent('#case-shape')}, mean/std/min/max ${stats}` : await page.textContent('#case-failure')}`);
  }
  // The attention maps the page draws after a file run: both canvases non-blank, a new search
  // redraws the search map, and window.lastMaps' rows are distributions.
  const pixels = (id) => page.evaluate((id) => {
    const c = document.getElementById(id);
    if (!c.width || !c.height) return { width: 0, height: 0, colours: 0, coloured: 0, hash: 0 };
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    let coloured = 0, hash = 0;
    for (let i = 0; i < data.length; i += 4) {
      const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
      colours.add(rgb);
      if (rgb !== 0xffffff) coloured += 1;
      hash = (hash * 31 + rgb) >>> 0;
    }
    return { width: c.width, height: c.height, colours: colours.size, coloured, hash };
  }, id);
  const checkMaps = async (file) => {
    await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('maps').dataset.state),
      null, { timeout: TIMEOUT });
    const state = await page.getAttribute('#maps', 'data-state');
    const hidden = await page.$eval('#maps', (s) => s.hidden);
    check(state === 'done' && !hidden, `${file}: #maps drawn${state === 'done' ? '' : `: ${await page.textContent('#maps-failure')}`}`);
    if (state !== 'done') return;
    const sums = await page.evaluate(() => {
      const m = window.lastMaps;
      const q = m.queryRows.length;
      let worstSearch = 0, worstSelection = 0, rows = 0;
      for (let r = 0; r < m.batch * m.searches * q; r += 1) {
        let a = 0, b = 0;
        for (let j = 0; j < m.seq; j += 1) a += m.search[r * m.seq + j];
        for (let k = 0; k < m.retrievals; k += 1) b += m.selection[r * m.retrievals + k];
        worstSearch = Math.max(worstSearch, Math.abs(a - 1));
        worstSelection = Math.max(worstSelection, Math.abs(b - 1));
        rows += 1;
      }
      const shapes = m.search.length === m.batch * m.searches * q * m.seq &&
        m.selection.length === m.batch * m.searches * q * m.retrievals &&
        m.output.length === window.lastCase.batch * window.lastCase.seq * window.lastCase.info.dim;
      return { worstSearch, worstSelection, rows, shapes, seq: m.seq, q, batch: m.batch, searches: m.searches };
    });
    check(sums.shapes && sums.rows > 0 && sums.worstSearch < 1e-4 && sums.worstSelection < 1e-4,
      `${file}: lastMaps [${sums.batch}, ${sums.searches}, ${sums.q}, ${sums.seq}]: ${sums.rows} search rows sum to 1 ` +
      `within ${sums.worstSearch.toExponential(1)}, selection rows within ${sums.worstSelection.toExponential(1)}`);
    return sums;
  };
  // A causal checkpoint run with "causal" unticked: the error is marked as failed, and the page
  // finds that the other setting matches and says to tick it (a checkpoint does not record it).
  {
    const file = 'tests/golden/causal.safetensors';
    const state = await loadFile(`${REPO}${file}`, false);
    const verdict = (await page.textContent('#error-verdict')).trim();
    check(state === 'done' && await page.getAttribute('#error-verdict', 'data-verdict') === 'fail' &&
      verdict.startsWith('FAIL') && verdict.includes('tick "causal"'),
      `${file} without causal: #error ${(await page.textContent('#error')).trim()}; #error-verdict ${verdict}`);
  }
  // A non-causal checkpoint run with "causal" ticked: the hint says to untick it. (Not a file the
  // loop below loads first: choosing the same file again fires no change event.)
  {
    const file = 'tests/golden/odd_sizes.safetensors';
    const state = await loadFile(`${REPO}${file}`, true);
    const verdict = (await page.textContent('#error-verdict')).trim();
    check(state === 'done' && verdict.startsWith('FAIL') && verdict.includes('untick "causal"'),
      `${file} with causal: #error-verdict ${verdict}`);
  }
  for (const [file, causal] of files) {
    const state = await loadFile(`${REPO}${file}`, causal);
    if (state !== 'done') {
      check(false, `${file}: ${await page.textContent('#case-failure')}`);
      continue;
    }
    const error = (await page.textContent('#error')).trim();
    const relative = Number(error.split(/\s+/)[0]);
    const time = await page.textContent('#case-time');
    check(relative < TOLERANCE && /\(prepare [0-9.]+ ms, first /.test(time), `${file}: #error ${error}; ${time}`);
    check(await page.getAttribute('#error-verdict', 'data-verdict') === 'ok',
      `${file}: #error-verdict ${await page.textContent('#error-verdict')}`);
    const sums = await checkMaps(file);
    if (file.endsWith('padding_mask.safetensors') && sums) {
      const search = await pixels('search-map');
      const selection = await pixels('selection-map');
      check(search.colours >= 50 && search.coloured > search.width * search.height / 4,
        `#search-map ${search.width}×${search.height}: ${search.colours} colours, ${search.coloured} non-background pixels`);
      check(selection.colours >= 10 && selection.coloured > selection.width * selection.height / 8,
        `#selection-map ${selection.width}×${selection.height}: ${selection.colours} colours, ${selection.coloured} non-background pixels`);
      // Another search (and batch row, token): the maps are redrawn and differ.
      await page.fill('#map-search', '2');
      await page.fill('#map-batch', '1');
      const options = await page.$$eval('#map-token option', (os) => os.map((o) => o.value));
      await page.selectOption('#map-token', options[5]);
      const search2 = await pixels('search-map');
      const selection2 = await pixels('selection-map');
      const readout = await page.textContent('#map-readout');
      check(search2.hash !== search.hash && selection2.hash !== selection.hash && search2.colours >= 50 &&
        /^token 5 \(batch row 1, search 2\): top keys /.test(readout),
        `changing the selectors redraws both maps: ${readout.split('\n')[0]}`);
    }
  }
  const runRandom = async () => {
    const before = Number(await page.getAttribute('#case-result', 'data-finished'));
    await page.click('#load-random');
    await page.waitForFunction(
      (n) => Number(document.getElementById('case-result').dataset.finished) > n,
      before,
      { timeout: TIMEOUT },
    );
    await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('maps').dataset.state) ||
      document.getElementById('case-result').dataset.state === 'error', null, { timeout: TIMEOUT });
    return page.getAttribute('#case-result', 'data-state');
  };
  // No file: random weights of the top form's sizes run through the same section, maps included.
  {
    const state = await runRandom();
    const layer = await page.textContent('#case-layer');
    check(state === 'done' && /^random weights \(seed 7\): random, dim 24, dim_head 6, searches 3, retrievals 2/.test(layer) &&
      (await page.textContent('#error')).startsWith('–'),
      `no file: ${state === 'done' ? `${layer}; output ${await page.textContent('#case-shape')}` : await page.textContent('#case-failure')}`);
    const sums = await checkMaps('random weights');
    const search = await pixels('search-map');
    check(sums && sums.searches === 3 && search.colours >= 50, `no file: #search-map drawn, ${search.colours} colours`);
  }

  // Maps past their byte limit fail on their own line, the old heatmaps go, and the next run
  // clears the failure and draws again.
  {
    await page.fill('#maps-max-kib', '1');
    const state = await runRandom();
    const failure = await page.textContent('#maps-failure');
    check(state === 'done' && await page.getAttribute('#maps', 'data-state') === 'error' &&
      await page.$eval('#maps', (s) => s.hidden) && failure.includes('MAPS_TOO_LARGE') &&
      (await pixels('search-map')).width === 0,
      `maps over the limit: the heatmaps are gone, #maps-failure says ${failure}`);
    await page.fill('#maps-max-kib', '262144');
    await runRandom();
    check(await page.getAttribute('#maps', 'data-state') === 'done' && !(await page.$eval('#maps', (s) => s.hidden)) &&
      (await page.textContent('#maps-failure')) === '',
      'the next run clears the maps failure and draws the maps');
  }
  // More than 480 keys: the search map is max-pooled to the plot, drawn at devicePixelRatio.
  {
    await page.fill('#load-seq', '600');
    const state = await runRandom();
    const canvas = await page.$eval('#search-map', (c) => ({ width: c.width, css: parseFloat(c.style.width),
      dpr: window.devicePixelRatio }));
    const search = await pixels('search-map');
    check(state === 'done' && canvas.width === Math.round(canvas.css * canvas.dpr) && search.colours >= 50,
      `600 keys: #search-map ${canvas.width} px for ${canvas.css} CSS px at devicePixelRatio ${canvas.dpr}, ${search.colours} colours`);
    await page.fill('#load-seq', '16');
  }
  // f16 storage: runs where the adapter has shader-f16, else a MISSING_FEATURE message.
  {
    await page.selectOption('#load-precision', 'f16');
    const state = await runRandom();
    const layer = await page.textContent('#case-layer');
    const failure = await page.textContent('#case-failure');
    check((state === 'done' && layer.endsWith(', f16')) || (state === 'error' && failure.includes('shader-f16')),
      `f16 storage: ${state === 'done' ? layer : failure}`);
    await page.selectOption('#load-precision', 'f32');
  }
  // A file dropped during a run: it waits for that run (which keeps its model), then runs; both
  // finish and the page shows the second.
  {
    const files = await Promise.all(['tiny', 'padding_mask'].map(async (name) =>
      [...await readFile(`${REPO}tests/golden/${name}.safetensors`)]));
    const before = Number(await page.getAttribute('#case-result', 'data-finished'));
    // The longer run first (padding_mask: a batch of 2 with its maps). The second drop is made
    // in the page the moment the first run's state turns to running (a MutationObserver), so it
    // lands while that run is in progress however fast the run is; a drop from here after a
    // round trip to the page could land after the run had finished. The page holds the observer
    // (window.dropObserver): Chromium may collect an observer that only the observed element
    // refers to, and with it this promise ("Resulting promise was garbage collected", once in
    // CI).
    await page.evaluate(([first, second]) => new Promise((resolve) => {
      const dropFile = (bytes, name) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name));
        document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, cancelable: true }));
      };
      const result = document.getElementById('case-result');
      window.dropObserver = new MutationObserver(() => {
        if (result.dataset.state === 'running') {
          window.dropObserver.disconnect();
          delete window.dropObserver;
          dropFile(second, 'second.safetensors');
          resolve();
        }
      });
      window.dropObserver.observe(result, { attributes: true, attributeFilter: ['data-state'] });
      dropFile(first, 'first.safetensors');
    }), [files[1], files[0]]);
    await page.waitForFunction(
      (n) => Number(document.getElementById('case-result').dataset.finished) >= n + 2,
      before,
      { timeout: TIMEOUT },
    );
    const state = await page.getAttribute('#case-result', 'data-state');
    const layer = await page.textContent('#case-layer');
    const queued = Number(await page.getAttribute('#case-result', 'data-queued'));
    const error = (await page.textContent('#error')).trim();
    check(state === 'done' && layer.startsWith('second.safetensors') && queued >= 1 && Number(error.split(/\s+/)[0]) < TOLERANCE,
      `a file dropped during a run waits for it: ${queued} queued; then ${layer.split(':')[0]}, #error ${error}`);
  }

  // Generation: prefill, then decode token by token, against the full causal forward.
  {
    await page.click('#gen-run');
    await page.waitForFunction(() => ['done', 'error'].includes(document.getElementById('generation').dataset.state),
      null, { timeout: TIMEOUT });
    const state = await page.getAttribute('#generation', 'data-state');
    const diff = (await page.textContent('#decode-diff')).trim();
    check(state === 'done' && Number(diff) < TOLERANCE,
      `generation: decode vs forward max-abs ${diff}; ${state === 'done' ? `prefill ${await page.textContent('#prefill-time')}, decode ${await page.textContent('#decode-time')}` : await page.textContent('#gen-failure')}`);
  }

  // The JavaScript API's errors: JS Errors with the crate's message, never a panic.
  {
    const { out: errors, concurrent } = await page.evaluate(async () => {
      const api = await import('./pkg-page/compattn_web.js');
      const caught = async (f) => {
        try { await f(); return 'no error'; } catch (e) { return e instanceof Error ? `Error: ${e.message}` : `not an Error: ${e}`; }
      };
      const layer = await api.CompositionalAttention.random({ dim: 8, dimHead: 4, searches: 2, retrievals: 2, seed: 3 });
      const out = {
        length: await caught(() => layer.forward(new Float32Array(7), 1, 1)),
        batch: await caught(() => layer.forward(new Float32Array(8), 1.5, 1)),
        mask: await caught(() => layer.forward(new Float32Array(16), 1, 2, new Uint8Array(3))),
        nan: await caught(() => layer.forward(new Float32Array(8).fill(NaN), 1, 1)),
        kvCache: await caught(() => layer.kvCache(1, 4)),
        load: await caught(() => api.CompositionalAttention.load(new Uint8Array([1, 2, 3]))),
        strategy: await caught(() => api.CompositionalAttention.random({ strategy: 'fast' })),
      };
      // Calls take turns: concurrent forwards give what sequential ones give.
      const xs = [1, 2, 3].map((seed) => api.randomNormal(2 * 5 * 8, seed));
      const together = await Promise.all(xs.map((x) => layer.forward(x, 2, 5)));
      const apart = [];
      for (const x of xs) apart.push(await layer.forward(x, 2, 5));
      const concurrent = together.every((y, i) => y.length === 80 && y.every((v, j) => v === apart[i][j]));
      layer.free();
      out.freed = await caught(() => layer.forward(new Float32Array(8), 1, 1));
      return { out, concurrent };
    });
    for (const [what, text] of Object.entries(errors)) {
      check(text.startsWith('Error: ') && !/panicked|unreachable/.test(text), `API error (${what}): ${text}`);
    }
    check(concurrent, 'three concurrent forwards (Promise.all) give what three sequential ones give');
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

finish();
