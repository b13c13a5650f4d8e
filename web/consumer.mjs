// The package as a user gets it: packs web/pkg/ (`npm pack`, after web/test.sh has built it and
// written its package.json from web/package.pkg.json), installs the tarball into the outside
// consumer examples/js-consumer/ (`npm install`, as its package.json names the tgz), type-checks
// the consumer against the package's TypeScript definitions (`tsc --noEmit`: main.js with
// checkJs, and api.ts), then opens the consumer's page in headless Chromium (an import map
// resolves the package name) and checks its forward against reference cases' `output`; runs the
// complete example of web/README.md ("JavaScript API") there too, on tests/golden/padding_mask.
//
//   node web/consumer.mjs       (web/test.sh runs it after e2e.mjs)
//
// Env: CHROMIUM (default /usr/bin/chromium). The npm registry is needed once, for typescript.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { launchChromium, tally } from './harness.mjs';
import { serve } from './serve.mjs';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));
const PKG = `${HERE}pkg`;
const CONSUMER = `${REPO}examples/js-consumer`;
const TOLERANCE = 1e-4;

const { check, finish } = tally('consumer');
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let browser = null;
let server = null;
try {
  const pkg = JSON.parse(readFileSync(`${PKG}/package.json`, 'utf8'));
  const tgz = `${pkg.name}-${pkg.version}.tgz`;
  rmSync(`${PKG}/${tgz}`, { force: true });
  const packed = run('npm', ['pack', '--json'], PKG);
  const files = JSON.parse(packed)[0].files.map((f) => f.path).sort();
  check(existsSync(`${PKG}/${tgz}`) && ['README.md', 'index.js', 'index.d.ts', 'compattn_web.d.ts', 'compattn_web.js', 'compattn_web_bg.wasm', 'package.json']
    .every((f) => files.includes(f)) && files.some((f) => /^snippets\/.*errors\.js$/.test(f)), `npm pack: web/pkg/${tgz} holds ${files.join(', ')}`);

  // A fresh install of the package (npm would keep a stale copy of the same version).
  rmSync(`${CONSUMER}/node_modules/compositional-attention`, { recursive: true, force: true });
  run('npm', ['install', '--no-audit', '--no-fund', '--no-package-lock'], CONSUMER);
  const installed = JSON.parse(readFileSync(`${CONSUMER}/node_modules/compositional-attention/package.json`, 'utf8'));
  check(installed.name === 'compositional-attention' && installed.version === pkg.version &&
    existsSync(`${CONSUMER}/node_modules/compositional-attention/${installed.types}`) &&
    existsSync(`${CONSUMER}/node_modules/compositional-attention/${installed.module}`),
  `npm install: examples/js-consumer/node_modules/${installed.name}@${installed.version} (module ${installed.module}, types ${installed.types})`);

  // web/README.md's TypeScript signatures, compiled under strict with the rest.
  const signatures = readFileSync(`${HERE}README.md`, 'utf8').match(/```ts\n([\s\S]*?)```/)[1];
  writeFileSync(`${CONSUMER}/readme-signatures.ts`, `${signatures}\nexport {};\n`);
  try {
    run(`${CONSUMER}/node_modules/.bin/tsc`, ['--noEmit', '-p', '.'], CONSUMER);
    check(true, 'tsc --noEmit: the consumer (main.js, api.ts) and web/README.md\'s TypeScript signatures type-check (strict) against the package\'s definitions');
  } catch (e) {
    check(false, `tsc --noEmit: ${e.stdout ?? ''}${e.stderr ?? e}`);
  }

  server = await serve({ root: REPO, port: 0 });
  const base = `http://localhost:${server.address().port}/examples/js-consumer/index.html`;
  browser = await launchChromium();
  const cases = [
    ['/tests/golden/padding_mask.safetensors', false],
    ['/tests/golden/causal.safetensors', true],
    ['/tests/golden-variants/keras/k02_prenorm.safetensors', false],
  ];
  for (const [checkpoint, causal] of cases) {
    const page = await browser.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
    await page.goto(`${base}?checkpoint=${encodeURIComponent(checkpoint)}${causal ? '&causal=1' : ''}`);
    await page.waitForFunction(() => document.getElementById('result').dataset.state !== 'running',
      null, { timeout: 120_000 });
    const state = await page.getAttribute('#result', 'data-state');
    const result = await page.evaluate(() => window.result ?? null);
    check(state === 'done' && result.relative < TOLERANCE && problems.length === 0,
      `consumer page, ${checkpoint}: ${state === 'done'
        ? `${result.format} [${result.shape}], max-abs / max|output| ${result.relative.toExponential(2)} on ${result.adapter}; ` +
          `forwardWithMaps rows [${result.mapsRows}] sum to 1 within ${result.mapsSumError.toExponential(1)}`
        : await page.textContent('#result')}${problems.length ? `; ${problems.join('; ')}` : ''}`);
    await page.close();
  }

  // The README's example, as written (its `model.safetensors` is a reference case of dim 32).
  const readme = readFileSync(`${HERE}README.md`, 'utf8');
  const section = readme.slice(readme.indexOf('## JavaScript API'));
  const example = section.match(/```js\n([\s\S]*?)```/)[1]
    .replace('"model.safetensors"', '"../../tests/golden/padding_mask.safetensors"');
  // Runs one README example as a page of the consumer; resolves to its console logs and its
  // errors, once a log starts with `done` or the deadline passes.
  const runExample = async (name, code, done, ms) => {
    writeFileSync(`${CONSUMER}/${name}.js`, code);
    writeFileSync(`${CONSUMER}/${name}.html`, readFileSync(`${CONSUMER}/index.html`, 'utf8')
      .replace('./main.js', `./${name}.js`));
    const page = await browser.newPage();
    const logs = [];
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
      else logs.push(m.text());
    });
    await page.goto(base.replace('index.html', `${name}.html`));
    const deadline = Date.now() + ms;
    while (!logs.some((l) => l.startsWith(done)) && problems.length === 0 && Date.now() < deadline) {
      await new Promise((ok) => setTimeout(ok, 200));
    }
    await page.close();
    return { logs, problems };
  };
  {
    // The example's last log is the caught error's message.
    const { logs, problems } = await runExample('readme-example', example, 'true x: expected', 120_000);
    const error = logs.find((l) => l.startsWith('true x: expected')) ?? '';
    check(error.includes('1·1·32 = 32') && logs.includes('SHAPE') && logs.includes('6 128 1') && problems.length === 0,
      `web/README.md's example runs: ${[...logs.filter((l) => !l.startsWith('[object')).slice(-3), ...problems].join(' | ')}`);
  }
  // The README's training example, as written: the student's loss falls.
  const training = [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
    .find((block) => block.includes('new AdamW('));
  {
    const { logs, problems } = await runExample('readme-training', training, 'loss ', 180_000);
    const line = logs.find((l) => l.startsWith('loss ')) ?? '';
    const [first, last] = (line.match(/loss (\S+) -> (\S+),/) ?? []).slice(1).map(Number);
    check(first > 0 && last < first / 2 && problems.length === 0,
      `web/README.md's training example runs: ${[line, ...problems].join(' | ')}`);
  }
} catch (e) {
  check(false, `consumer: ${e.stack ?? e}${e.stderr ? `\n${e.stderr}` : ''}`);
} finally {
  await browser?.close();
  server?.close();
}

finish();
