// @ts-check
// A program outside the repository's web/ directory using the packed package by its name:
// load a checkpoint's bytes, run the forward on WebGPU, compare with the file's `output`.
import init, { CompattnError, CompositionalAttention, readCase } from 'compositional-attention';

const out = /** @type {HTMLElement} */ (document.getElementById('result'));

async function main() {
  await init(); // fetches compattn_web_bg.wasm beside the module
  const params = new URL(location.href).searchParams;
  const url = params.get('checkpoint') ?? '../../tests/golden/tiny.safetensors';
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());

  const layer = await CompositionalAttention.load(bytes, {
    causal: params.get('causal') === '1',
    limits: 'webgpu',
  });
  const fileCase = readCase(bytes);
  if (!fileCase.input || !fileCase.output || fileCase.batch === null || fileCase.seq === null) {
    throw new Error(`${url} holds no input and output to check`);
  }
  const y = await layer.forward(fileCase.input, fileCase.batch, fileCase.seq, fileCase.mask);
  let maxAbs = 0;
  let maxOutput = 0;
  fileCase.output.forEach((v, i) => {
    maxAbs = Math.max(maxAbs, Math.abs(y[i] - v));
    maxOutput = Math.max(maxOutput, Math.abs(v));
  });
  // What the layer attended to: every search row (and selection row) is a distribution.
  const maps = await layer.forwardWithMaps(fileCase.input, fileCase.batch, fileCase.seq, fileCase.mask,
    { rows: fileCase.seq > 1 ? [0, fileCase.seq - 1] : [0] });
  let mapsSumError = 0;
  for (let r = 0; r < maps.batch * maps.searches * maps.queryRows.length; r += 1) {
    const row = maps.search.subarray(r * maps.seq, (r + 1) * maps.seq);
    const sel = maps.selection.subarray(r * maps.retrievals, (r + 1) * maps.retrievals);
    mapsSumError = Math.max(mapsSumError, Math.abs(row.reduce((a, v) => a + v, 0) - 1),
      Math.abs(sel.reduce((a, v) => a + v, 0) - 1));
  }
  if (!(mapsSumError < 1e-4) || maps.output.length !== y.length) {
    throw new Error(`forwardWithMaps: rows sum to 1 only within ${mapsSumError}`);
  }
  // A failing call throws a CompattnError with a stable code.
  const thrown = await layer.forward(new Float32Array(3), 1, 1).then(() => null, (e) => e);
  if (!(thrown instanceof CompattnError && thrown instanceof Error && thrown.code === 'SHAPE')) {
    throw new Error(`forward of a wrong-sized input threw ${thrown} (code ${thrown?.code})`);
  }
  const info = layer.info();
  const result = {
    url,
    format: info.format,
    adapter: info.adapter,
    shape: [fileCase.batch, fileCase.seq, layer.dim],
    length: y.length,
    relative: maxAbs / maxOutput,
    mapsRows: maps.queryRows,
    mapsSumError,
    errorCode: thrown.code,
  };
  layer.free();
  Object.assign(window, { result });
  out.textContent = JSON.stringify(result, null, 2);
  out.dataset.state = 'done';
}

main().catch((e) => {
  out.textContent = `failed: ${e instanceof Error ? e.message : e}`;
  out.dataset.state = 'error';
});
