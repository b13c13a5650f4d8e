// The demo page: loads the wasm module from ./pkg (wasm-bindgen --target web), opens the WebGPU
// device, and runs the configuration in the form. Each run appends a row to the results table.
import init, { Session, strategies, hasWebGpu } from './pkg/compattn_web.js';

const $ = (id) => document.getElementById(id);
const status = (text) => { $('status').textContent = text; };
const showError = (e) => { $('error').textContent = e ? String(e.message ?? e) : ''; };

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
    showError(`could not load ./pkg/compattn_web.js and its .wasm (build them with bash web/test.sh ` +
      `or wasm-bindgen --target web --out-dir web/pkg): ${e}`);
    status('not loaded');
    return;
  }
  for (const name of strategies()) {
    const option = document.createElement('option');
    option.value = option.textContent = name;
    $('strategy').append(option);
  }
  $('config').addEventListener('submit', run);
  if (!hasWebGpu()) {
    showError('This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome or Edge, or ' +
      'Firefox / Safari with WebGPU enabled, and open the page over https or localhost.');
    status('no WebGPU');
    return;
  }
  $('run').disabled = false;
  status('ready');
  document.body.dataset.ready = 'true';
}

main();
