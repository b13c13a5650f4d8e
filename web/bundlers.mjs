// The packed package through real bundlers, as web developers use it: a Vite production build,
// Vite's dev server, a webpack 5 production build, and in each a module Worker that runs a
// forward. Run after consumer.mjs (which packs web/pkg/ into its tarball); web/test.sh does.
//
//   node web/bundlers.mjs
//
// The app lives in web/target/bundlers/ (gitignored): a package.json that installs the tarball
// and the pinned bundlers from the npm registry, one page and one worker that load
// tests/golden/tiny.safetensors, run the forward and compare it with the file's `output`.
// Ends with "bundlers: N passed, M failed".
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launchChromium, tally } from './harness.mjs';
import { serve } from './serve.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));
const APP = `${HERE}target/bundlers`;
const TOLERANCE = 1e-4;
// Pinned so that a new release cannot change what CI tests.
const VITE = '8.4.1';
const WEBPACK = '5.113.0';
const WEBPACK_CLI = '7.3.1';

const { check, finish } = tally('bundlers');
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

// What the page and the worker both run: load, forward, compare with the file's output.
const CHECK = `
import init, { CompattnError, CompositionalAttention, readCase } from 'compositional-attention';

export async function check(url) {
  await init();
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const layer = await CompositionalAttention.load(bytes, { limits: 'webgpu' });
  const c = readCase(bytes);
  const y = await layer.forward(c.input, c.batch, c.seq, c.mask);
  let err = 0;
  let max = 0;
  c.output.forEach((v, i) => { err = Math.max(err, Math.abs(y[i] - v)); max = Math.max(max, Math.abs(v)); });
  const thrown = await layer.forward(new Float32Array(1), 1, 1).then(() => null, (e) => e);
  layer.free();
  return { relative: err / max, errorCode: thrown instanceof CompattnError ? thrown.code : String(thrown) };
}
`;

const PAGE_JS = `
import { check } from './check.js';

const out = document.getElementById('result');
const url = new URL('./tiny.safetensors', location.href).href;
try {
  const page = await check(url);
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const inWorker = await new Promise((ok, fail) => {
    worker.onmessage = (e) => ok(e.data);
    worker.onerror = (e) => fail(new Error(e.message ?? 'worker error'));
    worker.postMessage(url);
  });
  window.result = { page, worker: inWorker };
  out.dataset.state = 'done';
} catch (e) {
  window.result = { error: String(e?.stack ?? e) };
  out.dataset.state = 'failed';
}
out.textContent = JSON.stringify(window.result);
`;

const WORKER_JS = `
import { check } from './check.js';

self.onmessage = async (e) => {
  try {
    self.postMessage(await check(e.data));
  } catch (error) {
    self.postMessage({ error: String(error?.stack ?? error) });
  }
};
`;

const HTML = (script) => `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>compositional-attention through a bundler</title><link rel="icon" href="data:,"></head>
<body>
  <pre id="result" data-state="running">running…</pre>
  <script type="module" src="${script}"></script>
</body>
</html>
`;

/** Opens `url`, waits for the page's verdict, and checks it (page and worker). */
async function verdict(browser, url, what) {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  try {
    await page.goto(url);
    await page.waitForFunction(() => document.getElementById('result')?.dataset.state !== 'running',
      null, { timeout: 180_000 });
    const result = await page.evaluate(() => window.result ?? null);
    const ok = (r) => r && r.relative < TOLERANCE && r.errorCode === 'SHAPE';
    check(ok(result?.page) && ok(result?.worker) && problems.length === 0,
      `${what}: page ${JSON.stringify(result?.page ?? result)}, module worker ${JSON.stringify(result?.worker)}` +
      `${problems.length ? `; ${problems.join('; ')}` : ''}`);
  } catch (e) {
    check(false, `${what}: ${e.message}${problems.length ? `; ${problems.join('; ')}` : ''}`);
  } finally {
    await page.close();
  }
}

/** Spawns Vite's dev server on a free port; resolves to [child, url] once it listens. */
function viteDev() {
  return new Promise((ok, fail) => {
    const child = spawn(`${APP}/node_modules/.bin/vite`, ['--port', '0', '--host', '127.0.0.1', '--strictPort'],
      { cwd: APP, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => { child.kill(); fail(new Error(`vite dev did not start: ${output}`)); }, 60_000);
    const onData = (d) => {
      output += d;
      // eslint-disable-next-line no-control-regex
      const match = output.replace(/\x1b\[[0-9;]*m/g, '').match(/http:\/\/127\.0\.0\.1:(\d+)\//);
      if (match) {
        clearTimeout(timer);
        ok([child, `http://localhost:${match[1]}/`]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`vite dev exited (${code}): ${output}`)); });
  });
}

let browser = null;
let server = null;
let dev = null;
try {
  const pkg = JSON.parse(readFileSync(`${HERE}pkg/package.json`, 'utf8'));
  const tgz = `${HERE}pkg/${pkg.name}-${pkg.version}.tgz`;
  if (!existsSync(tgz)) run('npm', ['pack'], `${HERE}pkg`);

  rmSync(`${APP}/src`, { recursive: true, force: true });
  rmSync(`${APP}/node_modules/compositional-attention`, { recursive: true, force: true });
  mkdirSync(`${APP}/src`, { recursive: true });
  mkdirSync(`${APP}/public`, { recursive: true });
  writeFileSync(`${APP}/package.json`, JSON.stringify({
    private: true,
    type: 'module',
    dependencies: { 'compositional-attention': `file:${tgz}` },
    devDependencies: { vite: VITE, webpack: WEBPACK, 'webpack-cli': WEBPACK_CLI },
  }, null, 2));
  writeFileSync(`${APP}/src/check.js`, CHECK);
  writeFileSync(`${APP}/src/main.js`, PAGE_JS);
  writeFileSync(`${APP}/src/worker.js`, WORKER_JS);
  writeFileSync(`${APP}/index.html`, HTML('./src/main.js'));
  copyFileSync(`${REPO}tests/golden/tiny.safetensors`, `${APP}/public/tiny.safetensors`);
  // Vite's dependency pre-bundling would move the module away from its .wasm, which it finds
  // with new URL(…, import.meta.url): the package is excluded (web/README.md, bundler notes).
  writeFileSync(`${APP}/vite.config.js`, `export default {
  base: './',
  optimizeDeps: { exclude: ['compositional-attention'] },
  worker: { format: 'es' },
  build: { target: 'es2022' },
};
`);
  writeFileSync(`${APP}/webpack.config.mjs`, `import { fileURLToPath } from 'node:url';
export default {
  mode: 'production',
  entry: './src/main.js',
  output: { path: fileURLToPath(new URL('./dist-webpack', import.meta.url)), clean: true },
  experiments: { topLevelAwait: true },
  performance: { hints: false },
};
`);
  run('npm', ['install', '--no-audit', '--no-fund', '--no-package-lock'], APP);
  check(existsSync(`${APP}/node_modules/compositional-attention/index.js`),
    `npm install: the tarball, vite ${VITE}, webpack ${WEBPACK}, webpack-cli ${WEBPACK_CLI}`);

  browser = await launchChromium();

  // Vite: production build, served statically.
  try {
    run(`${APP}/node_modules/.bin/vite`, ['build', '--outDir', 'dist-vite', '--emptyOutDir'], APP);
    check(existsSync(`${APP}/dist-vite/index.html`), 'vite build');
  } catch (e) {
    check(false, `vite build: ${e.stdout ?? ''}${e.stderr ?? e}`);
  }
  server = await serve({ root: APP, port: 0 });
  const base = `http://localhost:${server.address().port}`;
  await verdict(browser, `${base}/dist-vite/index.html`, 'vite build, served');

  // Vite's dev server.
  try {
    let url;
    [dev, url] = await viteDev();
    await verdict(browser, url, 'vite dev server');
  } catch (e) {
    check(false, `vite dev server: ${e.message}`);
  }

  // webpack 5: production build; its page is written beside the bundle.
  try {
    run(`${APP}/node_modules/.bin/webpack`, ['--config', 'webpack.config.mjs'], APP);
    writeFileSync(`${APP}/dist-webpack/index.html`, HTML('./main.js'));
    copyFileSync(`${APP}/public/tiny.safetensors`, `${APP}/dist-webpack/tiny.safetensors`);
    check(existsSync(`${APP}/dist-webpack/main.js`), 'webpack build');
  } catch (e) {
    check(false, `webpack build: ${e.stdout ?? ''}${e.stderr ?? e}`);
  }
  await verdict(browser, `${base}/dist-webpack/index.html`, 'webpack 5 build, served');
} catch (e) {
  check(false, `bundlers: ${e.stack ?? e}${e.stderr ? `\n${e.stderr}` : ''}`);
} finally {
  dev?.kill();
  await browser?.close();
  server?.close();
}

finish();
