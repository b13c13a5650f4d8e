// The demo page: loads the wasm module from ./pkg-page (wasm-bindgen --target web), opens the WebGPU
// device, and runs the configuration in the form (each run appends a row to the results table);
// runs the user's own checkpoint file against the `output` it may hold; and demonstrates
// generation (prefill, then decode token by token) against the full causal forward.
import init, {
  Session, strategies, hasWebGpu, CompositionalAttention, readCase, randomNormal,
} from './pkg-page/compattn_web.js';
import { heatmap, sig, ticks } from './heatmap.js';

const $ = (id) => document.getElementById(id);
const status = (text) => { $('status').textContent = text; };
const message = (e) => (e ? String(e.message ?? e) : '');
const showError = (e) => { $('failure').textContent = message(e); };

let session = null;
let sessionLimits = null;
let runs = 0;

async function openSession(limits) {
  if (session && sessionLimits === limits) return session;
  if (session) session.free();
  session = null;
  status(`opening the WebGPU device (${limits} limits)…`);
  session = await Session.open(limits);
  sessionLimits = limits;
  $('device').textContent = `adapter: ${session.adapter()}\nlimits:  ${session.limits()}`;
  return session;
}

function readForm() {
  const num = (id) => Number($(id).value);
  return {
    dim: num('dim'),
    dimHead: num('dimHead'),
    searches: num('searches'),
    retrievals: num('retrievals'),
    batch: num('batch'),
    seq: num('seq'),
    causal: $('causal').checked,
    prenorm: $('prenorm').checked,
    strategy: $('strategy').value,
    seed: num('seed'),
    repeats: num('repeats'),
    maskLengths: $('maskLengths').value.trim() || null,
  };
}

const fmt = (v, digits = 2) => (v === null || v === undefined ? '–' : Number(v).toFixed(digits));
const sci = (v) => Number(v).toExponential(2);

function addRow(report) {
  runs += 1;
  const row = document.createElement('tr');
  row.dataset.within = String(report.within);
  const cells = [
    String(runs),
    report.config,
    report.strategy,
    fmt(report.firstMs, 1),
    fmt(report.forwardMs),
    fmt(report.gflops),
    fmt(report.referenceMs, 1),
    report.checkedRows === report.rows ? `all ${report.rows}` : `${report.checkedRows} of ${report.rows}`,
    sci(report.maxAbsRelative),
    sci(report.relL2),
  ];
  for (const [i, text] of cells.entries()) {
    const td = document.createElement('td');
    td.textContent = text;
    if (i === 1) td.className = 'cfg';
    row.append(td);
  }
  const check = document.createElement('td');
  check.className = report.within ? 'ok' : 'bad';
  check.textContent = report.within ? `ok (≤ ${report.tolerance})` : `FAIL (> ${report.tolerance})`;
  check.title = report.stats;
  row.append(check);
  $('results').tBodies[0].prepend(row);
  $('results').dataset.runs = String(runs);
}

async function run(event) {
  event?.preventDefault();
  const button = $('run');
  button.disabled = true;
  showError(null);
  $('results').dataset.state = 'running';
  try {
    const s = await openSession($('limits').value);
    const options = readForm();
    status(`running ${options.strategy} on the GPU and the reference on the CPU…`);
    const report = await s.run(options);
    window.lastReport = report;
    addRow(report);
    status(`done: ${report.stats}`);
    $('results').dataset.state = 'done';
  } catch (e) {
    console.error(e);
    showError(e);
    status('failed');
    $('results').dataset.state = 'error';
  } finally {
    button.disabled = false;
  }
}

async function main() {
  try {
    await init();
  } catch (e) {
    showError(`could not load ./pkg-page/compattn_web.js and its .wasm (build them with bash web/test.sh ` +
      `--page): ${e}`);
    status('not loaded');
    return;
  }
  for (const name of strategies()) {
    const option = document.createElement('option');
    option.value = option.textContent = name;
    $('strategy').append(option);
  }
  $('config').addEventListener('submit', run);
  setUpModel();
  setUpMaps();
  $('gen-form').addEventListener('submit', generate);
  if (!hasWebGpu()) {
    showError('This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome or Edge, or ' +
      'Firefox / Safari with WebGPU enabled, and open the page over https or localhost.');
    status('no WebGPU');
    return;
  }
  $('run').disabled = false;
  $('load-random').disabled = false;
  $('gen-run').disabled = false;
  status('ready');
  document.body.dataset.ready = 'true';
}

// ---- Your model: a checkpoint file, chosen or dropped -------------------------------------------

const median = (times) => {
  const sorted = [...times].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

/** mean, std, min, max of `y` (float64 sums). */
function summary(y) {
  let sum = 0, sq = 0, min = Infinity, max = -Infinity, nonFinite = 0;
  for (const v of y) {
    if (!Number.isFinite(v)) { nonFinite += 1; continue; }
    sum += v; sq += v * v;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const n = y.length - nonFinite;
  const mean = n ? sum / n : NaN;
  const std = n ? Math.sqrt(Math.max(sq / n - mean * mean, 0)) : NaN;
  return { mean, std, min, max, nonFinite };
}

/** max-abs / max|expected|, max-abs, max|expected|, relative L2 (non-finite actual: Infinity). */
function compare(actual, expected) {
  let maxAbs = 0, maxExpected = 0, diff2 = 0, ref2 = 0;
  for (let i = 0; i < expected.length; i += 1) {
    const d = Math.abs(actual[i] - expected[i]);
    maxAbs = Number.isFinite(d) && maxAbs !== Infinity ? Math.max(maxAbs, d) : Infinity;
    maxExpected = Math.max(maxExpected, Math.abs(expected[i]));
    diff2 += d * d;
    ref2 += expected[i] * expected[i];
  }
  return {
    relative: maxAbs / (maxExpected || 1),
    maxAbs,
    maxExpected,
    relL2: Math.sqrt(diff2) / (Math.sqrt(ref2) || 1),
  };
}

// The error against a file's `output` past which a run is marked as failed (the e2e test's
// tolerance; correct layers land near 1e-7). f16 storage rounds every stored tensor (about 5e-4
// of max|output| on random problems), so an f16 run is judged at the crate's f16 bound, 1e-2.
const FILE_TOLERANCE = { f32: 1e-4, f16: 1e-2 };

// Marks the error against the file's output as passed or failed. A checkpoint does not record
// `causal`, so a failure is most often that box: the file is run again with the other setting,
// and the verdict says which one matches; otherwise it names the usual causes.
async function judge(error, { bytes, options, x, batch, seq, mask, expected }) {
  const verdict = $('error-verdict');
  const tolerance = FILE_TOLERANCE[options.precision] ?? FILE_TOLERANCE.f32;
  const storage = options.precision === 'f16' ? ', f16 storage' : '';
  if (error.relative <= tolerance) {
    verdict.dataset.verdict = 'ok';
    verdict.textContent = `ok (≤ ${tolerance}${storage})`;
    return;
  }
  verdict.dataset.verdict = 'fail';
  verdict.textContent = `FAIL (> ${tolerance}${storage}): checking the other "causal" setting…`;
  const other = !options.causal;
  let otherError = null;
  let otherModel = null;
  try {
    otherModel = await CompositionalAttention.load(bytes, { ...options, causal: other });
    otherError = compare(await otherModel.forward(x, batch, seq, mask), expected);
  } catch (e) {
    console.warn('the other causal setting did not run:', e);
  } finally {
    if (otherModel) otherModel.free();
  }
  if (otherError && otherError.relative <= tolerance) {
    verdict.textContent = `FAIL (> ${tolerance}${storage}): the file's output matches with "causal" ` +
      `${other ? 'ticked' : 'unticked'} (error ${otherError.relative.toExponential(2)}): ` +
      `${other ? 'tick' : 'untick'} "causal" and run the file again (a checkpoint does not record it)`;
  } else {
    verdict.textContent = `FAIL (> ${tolerance}${storage}): the usual causes are "causal" (a checkpoint ` +
      `does not record it; the other setting does not match either), "prenorm" or the parameter ` +
      `prefix, or a wrong format or constructor JSON`;
  }
}

let model = null; // the loaded CompositionalAttention
// What the model section runs: a file ({ name, bytes }) or random weights ({ name, random: options }).
let modelSource = null;
let lastFile = null; // the file last chosen or dropped

const caseStatus = (text) => { $('load-status').textContent = text; };

function setUpModel() {
  // Choices are numbered when made: a file still being read when a later one is chosen is
  // dropped, so the last choice is the one that runs, whatever the read times.
  let choices = 0;
  const chosen = (file) => {
    if (!file) return;
    choices += 1;
    const choice = choices;
    file.arrayBuffer().then((buffer) => {
      if (choice !== choices) return;
      lastFile = { name: file.name, bytes: new Uint8Array(buffer) };
      modelSource = lastFile;
      $('load-run').disabled = false;
      runModel();
    }, (e) => { $('case-failure').textContent = `could not read ${file.name}: ${message(e)}`; });
  };
  $('checkpoint').addEventListener('change', () => chosen($('checkpoint').files[0]));
  $('load-form').addEventListener('submit', (event) => {
    event.preventDefault();
    modelSource = lastFile;
    runModel();
  });
  // No file: a layer of the top form's sizes with random weights, on the input section's sizes.
  $('load-random').addEventListener('click', () => {
    const f = readForm();
    const random = { dim: f.dim, dimHead: f.dimHead, searches: f.searches, retrievals: f.retrievals,
      causal: f.causal, prenorm: f.prenorm, seed: f.seed };
    modelSource = { name: `random weights (seed ${f.seed})`, random };
    runModel();
  });
  // Drop a file anywhere on the page.
  let depth = 0;
  document.addEventListener('dragenter', (e) => { e.preventDefault(); depth += 1; document.body.classList.add('dragging'); });
  document.addEventListener('dragleave', () => { depth -= 1; if (depth <= 0) document.body.classList.remove('dragging'); });
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    document.body.classList.remove('dragging');
    chosen(e.dataTransfer?.files?.[0]);
  });
}

// One model run at a time: a file chosen or dropped during a run waits for it (the run keeps
// the model it loaded until it ends); the last one chosen meanwhile runs next, earlier ones not.
let modelRunning = false;
let modelQueued = false;

async function runModel() {
  if (!modelSource) return;
  if (modelRunning) {
    modelQueued = true;
    const result = $('case-result');
    result.dataset.queued = String(Number(result.dataset.queued ?? 0) + 1);
    caseStatus(`queued: ${modelSource.name} runs when the current run ends`);
    return;
  }
  modelRunning = true;
  try {
    await runModelNow();
  } finally {
    modelRunning = false;
  }
  if (modelQueued) {
    modelQueued = false;
    runModel();
  }
}

/** Hides the heatmaps of the last run and its maps failure (a new run draws its own). */
function clearMaps() {
  maps = null;
  const section = $('maps');
  section.hidden = true;
  section.dataset.state = 'idle';
  $('maps-failure').textContent = '';
  for (const id of ['search-map', 'selection-map']) {
    $(id).width = 0;
    $(id).height = 0;
  }
}

async function runModelNow() {
  const result = $('case-result');
  result.dataset.state = 'running';
  $('load-run').disabled = true;
  $('load-random').disabled = true;
  $('case-failure').textContent = '';
  clearMaps();
  for (const id of ['case-layer', 'case-input', 'case-shape', 'case-stats', 'error', 'case-time']) $(id).textContent = '–';
  $('error-verdict').textContent = '';
  delete $('error-verdict').dataset.verdict;
  try {
    const { name, bytes, random } = modelSource;
    caseStatus(`reading ${name}…`);
    const fileCase = bytes ? readCase(bytes) : { input: null, mask: null, output: null };
    const config = $('load-config').value.trim();
    const options = {
      causal: $('load-causal').checked,
      prefix: $('load-prefix').value.trim(),
      config: config || undefined,
      limits: $('limits').value,
      strategy: $('strategy').value,
      precision: $('load-precision').value,
    };
    caseStatus(`loading ${name} onto the GPU…`);
    if (model) model.free();
    model = null;
    model = bytes
      ? await CompositionalAttention.load(bytes, options)
      : await CompositionalAttention.random({ ...random, limits: options.limits,
        strategy: options.strategy, precision: options.precision });
    const info = model.info();
    $('case-layer').textContent = `${name}: ${info.format}, dim ${info.dim}, dim_head ${info.dimHead}, ` +
      `searches ${info.searches}, retrievals ${info.retrievals}${info.causal ? ', causal' : ''}` +
      `${info.prenorm ? ', prenorm' : ''}${info.bias ? ', bias' : ''}; ${info.strategy}, ${info.precision}`;

    let x = fileCase.input, batch = fileCase.batch, seq = fileCase.seq, inputWhat;
    if (x && fileCase.dim !== info.dim) {
      throw new Error(`the file's input has dim ${fileCase.dim}, the layer ${info.dim}`);
    }
    if (x) {
      inputWhat = `the file's input [${batch}, ${seq}, ${info.dim}]${fileCase.mask ? ' with its mask' : ''}`;
    } else {
      batch = Number($('load-batch').value);
      seq = Number($('load-seq').value);
      const seed = Number($('load-seed').value);
      x = randomNormal(batch * seq * info.dim, seed);
      inputWhat = `standard normal [${batch}, ${seq}, ${info.dim}], seed ${seed} (${bytes ? 'the file has no input' : 'no file'})`;
    }
    $('case-input').textContent = inputWhat;
    // Warm-up: the shape's buffers and pipelines before the first forward, with progress.
    const prepareStart = performance.now();
    await model.prepare(batch, seq, {
      onProgress: ({ compiled, total }) => caseStatus(`compiling pipelines: ${compiled} of ${total}…`),
    });
    const prepareMs = performance.now() - prepareStart;
    caseStatus('running the forward…');
    const start = performance.now();
    const y = await model.forward(x, batch, seq, fileCase.mask);
    const firstMs = performance.now() - start;
    const times = [];
    for (let i = 0; i < 5; i += 1) {
      const t0 = performance.now();
      await model.forward(x, batch, seq, fileCase.mask);
      times.push(performance.now() - t0);
    }
    const s = summary(y);
    $('case-shape').textContent = `[${batch}, ${seq}, ${info.dim}]`;
    $('case-stats').textContent = `${sig(s.mean)}, ${sig(s.std)}, ${sig(s.min)}, ${sig(s.max)}` +
      (s.nonFinite ? ` (${s.nonFinite} non-finite)` : '');
    let error = null;
    if (fileCase.output && fileCase.output.length === y.length) {
      error = compare(y, fileCase.output);
      $('error').textContent = `${error.relative.toExponential(2)} (max-abs ${error.maxAbs.toExponential(2)}, ` +
        `max|output| ${sig(error.maxExpected)}, rel-L2 ${error.relL2.toExponential(2)})`;
      await judge(error, { bytes, options, x, batch, seq, mask: fileCase.mask, expected: fileCase.output });
    } else if (fileCase.output) {
      $('error').textContent = `– (the file's output has ${fileCase.output.length} numbers, the result ${y.length})`;
    } else {
      $('error').textContent = bytes ? '– (the file has no output to compare with)' : '– (random weights: no reference output)';
    }
    const forwardMs = median(times);
    $('case-time').textContent = `${forwardMs.toFixed(2)} ms (prepare ${prepareMs.toFixed(1)} ms, ` +
      `first ${firstMs.toFixed(1)} ms, ${times.length} timed)`;
    window.lastCase = { name, info, batch, seq, error, stats: s, forwardMs, firstMs, prepareMs };
    result.dataset.runs = String(Number(result.dataset.runs) + 1);
    result.dataset.state = 'done';
    caseStatus(`attention maps of ${name}…`);
    await showMaps(model, x, batch, seq, fileCase.mask, name);
    caseStatus(`done: ${name}`);
  } catch (e) {
    console.warn(e);
    $('case-failure').textContent = message(e);
    result.dataset.state = 'error';
    caseStatus('failed');
  } finally {
    $('load-run').disabled = !lastFile;
    $('load-random').disabled = false;
    result.dataset.finished = String(Number(result.dataset.finished) + 1);
  }
}

// ---- Attention maps: heatmaps of forwardWithMaps ----------------------------------------------

/** The query rows to draw: every row up to 64 tokens, else 64 spread evenly (so a long file's
 *  maps stay small: batch·searches·64·(seq + retrievals) numbers). */
function mapRows(seq, most = 64) {
  if (seq <= most) return null;
  const rows = new Set();
  for (let i = 0; i < most; i += 1) rows.add(Math.round((i * (seq - 1)) / (most - 1)));
  return [...rows].sort((a, b) => a - b);
}

let maps = null; // { result: MapsResult, name }

/** forwardWithMaps on the model run, then the heatmaps; a failure leaves the run itself done. */
async function showMaps(layer, x, batch, seq, mask, name) {
  const section = $('maps');
  section.dataset.state = 'running';
  try {
    const rows = mapRows(seq);
    const maxBytes = 1024 * Number($('maps-max-kib').value);
    const result = await layer.forwardWithMaps(x, batch, seq, mask, rows ? { rows, maxBytes } : { maxBytes });
    maps = { result, name };
    window.lastMaps = result;
    const q = result.queryRows.length;
    $('maps-note').textContent = `${name}: ${result.batch} batch row(s), ${result.searches} searches, ` +
      `${result.retrievals} retrievals, ${seq} keys; ${q === seq ? 'every query token' : `${q} of ${seq} query tokens, spread evenly`} ` +
      '(forwardWithMaps, the unfused strategy).';
    $('map-batch').max = String(result.batch - 1);
    $('map-search').max = String(result.searches - 1);
    for (const id of ['map-batch', 'map-search']) {
      if (Number($(id).value) > Number($(id).max)) $(id).value = '0';
    }
    const token = $('map-token');
    const previous = Number(token.selectedOptions[0]?.textContent);
    token.replaceChildren(...result.queryRows.map((row, i) => {
      const option = document.createElement('option');
      option.value = String(i);
      option.textContent = String(row);
      return option;
    }));
    const keep = result.queryRows.indexOf(previous);
    token.value = String(keep >= 0 ? keep : 0);
    section.hidden = false;
    drawMaps();
    section.dataset.state = 'done';
  } catch (e) {
    console.warn(e);
    clearMaps();
    $('maps-failure').textContent = `attention maps of ${name}: ${e.code ? `${e.code}: ` : ''}${message(e)}`;
    section.dataset.state = 'error';
  }
}

function setUpMaps() {
  for (const id of ['map-batch', 'map-search', 'map-token']) {
    // `input` fires on every edit of a number and every pick in a select (`change` would draw twice).
    $(id).addEventListener('input', () => { if (maps) drawMaps(); });
  }
  $('maps-form').addEventListener('submit', (event) => event.preventDefault());
}

/** The selector's value as a whole number in [0, max]. */
function choice(id, max) {
  const v = Math.floor(Number($(id).value));
  return Number.isFinite(v) ? Math.min(Math.max(v, 0), max) : 0;
}

/** Draws both heatmaps of the chosen batch row and search, and the chosen token's readout. */
function drawMaps() {
  const m = maps.result;
  const q = m.queryRows.length;
  const b = choice('map-batch', m.batch - 1);
  const sigma = choice('map-search', m.searches - 1);
  const t = choice('map-token', q - 1);
  const base = (b * m.searches + sigma) * q;
  const search = m.search.subarray(base * m.seq, (base + q) * m.seq);
  const selection = m.selection.subarray(base * m.retrievals, (base + q) * m.retrievals);
  const rowLabels = m.queryRows.map(String);
  heatmap($('search-map'), search, q, m.seq, {
    rowLabels, rowLabel: 'query token', colLabel: 'key →', colTicks: ticks(m.seq), highlight: t,
    maxWidth: 480, maxHeight: 480, title: `search attention, batch row ${b}, search ${sigma}`,
  });
  heatmap($('selection-map'), selection, q, m.retrievals, {
    rowLabels, rowLabel: 'query token', colLabel: 'retrieval →', colTicks: ticks(m.retrievals),
    highlight: t, maxWidth: 28 * Math.min(m.retrievals, 8), maxHeight: 480,
    title: `selection, search ${sigma}`,
  });
  // The chosen token's row: its largest keys and its selection.
  const row = search.subarray(t * m.seq, (t + 1) * m.seq);
  const top = [...row.keys()].sort((i, j) => row[j] - row[i]).slice(0, 5);
  const sel = selection.subarray(t * m.retrievals, (t + 1) * m.retrievals);
  $('map-readout').textContent = `token ${m.queryRows[t]} (batch row ${b}, search ${sigma}): ` +
    `top keys ${top.map((j) => `${j} (${row[j].toFixed(3)})`).join(', ')}\n` +
    `selection over retrievals: ${[...sel].map((v, k) => `ρ${k} ${v.toFixed(3)}`).join(', ')}`;
  $('maps').dataset.drawn = String(Number($('maps').dataset.drawn ?? 0) + 1);
}

// ---- Generation: prefill, then decode token by token ------------------------------------------

/** Rows [t0, t1) of every batch row of x [batch, seq, dim]. */
function rows(x, batch, seq, dim, t0, t1) {
  const out = new Float32Array(batch * (t1 - t0) * dim);
  for (let b = 0; b < batch; b += 1) {
    out.set(x.subarray((b * seq + t0) * dim, (b * seq + t1) * dim), b * (t1 - t0) * dim);
  }
  return out;
}

async function generate(event) {
  event?.preventDefault();
  const gen = $('generation');
  const button = $('gen-run');
  button.disabled = true;
  gen.dataset.state = 'running';
  $('gen-failure').textContent = '';
  $('decode-diff').textContent = '–';
  $('tokens').tBodies[0].replaceChildren();
  let layer = null;
  let cache = null;
  try {
    const form = readForm();
    const batch = Number($('gen-batch').value);
    const prompt = Number($('gen-prompt').value);
    const total = Number($('gen-tokens').value);
    if (!(prompt >= 1 && total > prompt)) throw new Error('need 1 ≤ prompt tokens < total tokens');
    $('gen-status').textContent = 'building a causal layer with random weights…';
    layer = await CompositionalAttention.random({
      dim: form.dim, dimHead: form.dimHead, searches: form.searches, retrievals: form.retrievals,
      prenorm: form.prenorm, causal: true, seed: form.seed,
      limits: $('limits').value, strategy: form.strategy,
    });
    const dim = layer.dim;
    const x = randomNormal(batch * total * dim, form.seed + 1);
    $('gen-status').textContent = 'full causal forward…';
    const full = await layer.forward(x, batch, total);
    cache = layer.kvCache(batch, total);
    let t0 = performance.now();
    const y = await layer.prefill(cache, rows(x, batch, total, dim, 0, prompt), prompt);
    const prefillMs = performance.now() - t0;
    let overall = compare(y, rows(full, batch, total, dim, 0, prompt)).maxAbs;
    const addToken = (token, step, ms, diff) => {
      const tr = document.createElement('tr');
      for (const text of [String(token), step, ms.toFixed(2), diff.toExponential(2)]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      $('tokens').tBodies[0].append(tr);
    };
    addToken(`0–${prompt - 1}`, 'prefill', prefillMs, overall);
    const times = [];
    for (let t = prompt; t < total; t += 1) {
      $('gen-status').textContent = `decoding token ${t}…`;
      t0 = performance.now();
      const row = await layer.decode(cache, rows(x, batch, total, dim, t, t + 1));
      const ms = performance.now() - t0;
      times.push(ms);
      const diff = compare(row, rows(full, batch, total, dim, t, t + 1)).maxAbs;
      overall = Math.max(overall, diff);
      addToken(t, 'decode', ms, diff);
    }
    $('decode-diff').textContent = `${overall.toExponential(2)}`;
    $('prefill-time').textContent = `${prefillMs.toFixed(2)} ms for ${prompt} tokens × batch ${batch}`;
    $('decode-time').textContent = `${median(times).toFixed(2)} ms (${times.length} tokens, cache ${cache.len}/${cache.capacity})`;
    window.lastGeneration = { batch, prompt, total, maxAbs: overall, prefillMs, decodeMs: times, cacheLen: cache.len };
    gen.dataset.state = 'done';
    $('gen-status').textContent = `done: decode matches the full forward within ${overall.toExponential(2)}`;
  } catch (e) {
    console.warn(e);
    $('gen-failure').textContent = message(e);
    gen.dataset.state = 'error';
    $('gen-status').textContent = 'failed';
  } finally {
    cache?.free();
    layer?.free();
    button.disabled = false;
  }
}

main();
