// The error every failing call of the compositional-attention package throws (web/src/errors.rs
// makes them). `code` is stable across versions; `message` is the crate's explanation, in terms
// of the JavaScript API.
export class CompattnError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'CompattnError';
    this.code = code;
  }
}

export function compattnError(code, message) {
  return new CompattnError(code, message);
}

// Calls `hook` once with a CompattnError of code DEVICE_LOST when `device` is lost (the
// `onDeviceLost` option). An exception the hook throws is the page's: it goes to the console.
export function onDeviceLost(device, hook) {
  device.lost.then((info) => {
    hook(compattnError('DEVICE_LOST',
      `the WebGPU device was lost (${info.reason}): ${info.message || 'no message'}; ` +
      'load the layer again to open a new device'));
  });
}
