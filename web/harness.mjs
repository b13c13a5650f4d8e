// What the two browser scripts (e2e.mjs, consumer.mjs) share: the system Chromium with WebGPU on
// SwiftShader (never a browser download), and the tally of checks whose last line web/test.sh
// reads ("<name>: N passed, M failed").
import { chromium } from 'playwright-core';

/** Headless Chromium (CHROMIUM, default /usr/bin/chromium) with WebGPU on SwiftShader, which
 *  needs no GPU; localhost is a secure context, so navigator.gpu is there. */
export function launchChromium() {
  return chromium.launch({
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
}

/** `check(ok, what)` prints one line per check; `finish()` prints "<name>: N passed, M failed"
 *  and exits with 0 only when nothing failed. */
export function tally(name) {
  let passed = 0;
  let failed = 0;
  return {
    check(ok, what) {
      if (ok) passed += 1;
      else failed += 1;
      console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
    },
    finish() {
      console.log(`${name}: ${passed} passed, ${failed} failed`);
      process.exit(failed === 0 ? 0 : 1);
    },
  };
}
