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
