// Type-checked only (tsc --noEmit): the package's TypeScript definitions describe the API the
// README documents. Never run.
import init, {
  CompattnError,
  type CompattnErrorCode,
  Activations,
  AdamW,
  CompositionalAttention,
  Gradients,
  KvCache,
  readCase,
  randomNormal,
  type Case,
  type LayerInfo,
  type LoadOptions,
  type MapsOptions,
  type MapsResult,
  type AdamWOptions,
  type ParameterTensors,
  type TrainResult,
} from 'compositional-attention';

export async function typed(bytes: Uint8Array): Promise<number> {
  await init();
  const options: LoadOptions = {
    causal: true,
    prefix: '',
    config: { format: 'fairseq', embed_dim: 32, num_heads: 4 },
    limits: 'webgpu',
    precision: 'f32',
    strategy: 'fused',
  };
  const layer: CompositionalAttention = await CompositionalAttention.load(bytes, options);
  const plain = await CompositionalAttention.load(bytes);
  const fromBuffer = await CompositionalAttention.load(new ArrayBuffer(8));
  // @ts-expect-error: causal is a boolean, not the string "false"
  await CompositionalAttention.load(bytes, { causal: 'false' });
  try {
    await plain.forward(new Float32Array(3), 1, 1);
  } catch (e) {
    if (e instanceof CompattnError) {
      const code: CompattnErrorCode = e.code;
      const message: string = e.message;
      console.log(code, message, fromBuffer.dim);
    }
  }
  const random = await CompositionalAttention.random({ dim: 32, dimHead: 8, causal: true, seed: 7 });
  const c: Case = readCase(bytes);
  const x: Float32Array = randomNormal(2 * 5 * layer.dim, 1);
  const y: Float32Array = await layer.forward(x, 2, 5);
  const masked: Float32Array = await layer.forward(x, 2, 5, new Uint8Array(10).fill(1));
  const abortable: Float32Array = await layer.forward(x, 2, 5, null, { signal: new AbortController().signal });
  // On the layer's device, the page's buffers in and out, no readback.
  const device: GPUDevice = layer.device;
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const input: GPUBuffer = device.createBuffer({ size: x.byteLength, usage });
  const output: GPUBuffer = device.createBuffer({ size: x.byteLength, usage });
  await layer.forwardGpu(input, output, 2, 5);
  const mapsOptions: MapsOptions = { rows: [0, 4], maxBytes: 1 << 20 };
  const maps: MapsResult = await layer.forwardWithMaps(x, 2, 5, new Uint8Array(10).fill(1), mapsOptions);
  const all: MapsResult = await layer.forwardWithMaps(x, 2, 5);
  const mapsOutput: Float32Array = maps.output;
  const search: Float32Array = maps.search; // [batch, searches, q, seq]
  const selection: Float32Array = maps.selection; // [batch, searches, q, retrievals]
  const mapSizes: number = maps.batch + maps.searches + maps.retrievals + maps.seq + maps.queryRows[0];
  // @ts-expect-error: rows is an array of numbers
  await layer.forwardWithMaps(x, 2, 5, undefined, { rows: '0,4' });
  const cache: KvCache = random.kvCache(2, 16);
  const p: Float32Array = await random.prefill(cache, x, 5);
  const d: Float32Array = await random.decode(cache, x.subarray(0, 2 * layer.dim));
  const len: number = cache.len + cache.capacity + cache.batch;
  cache.clear();
  const info: LayerInfo = layer.info();
  const limit: number = info.limits.maxStorageBufferBindingSize;
  const f16: boolean = info.limits.shaderF16;
  const names: string = `${info.adapter} ${info.backend} ${info.precision} ${info.strategy} ${info.format}`;
  const sizes: number = info.dim + info.dimHead + info.searches + info.retrievals + info.config.dim;
  // @ts-expect-error: limits is "adapter" or "webgpu"
  await CompositionalAttention.load(bytes, { limits: 'everything' });
  // @ts-expect-error: strategy is "fused" or "unfused"
  await CompositionalAttention.random({ strategy: 'fast' });
  // Training: forwardTrain, backward, gradients, AdamW, weights.
  await random.prepareTraining(2, 5);
  const grads: Gradients = random.gradients();
  const trained: TrainResult = await random.forwardTrain(x, 2, 5, null, 7);
  const seeded: TrainResult = await random.forwardTrain(x, 2, 5, undefined, 7n);
  const act: Activations = trained.activations;
  const dx: Float32Array = await random.backward(act, trained.output, grads);
  grads.zero();
  const adamOptions: AdamWOptions = { betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 };
  const opt = new AdamW(random, 1e-3, adamOptions);
  await opt.step(random, grads);
  const g: ParameterTensors = await grads.toObject();
  const w: ParameterTensors = await random.weights();
  const trainedSizes: number = act.gpuBytes + grads.gpuBytes + opt.steps + dx.length
    + seeded.output.length + Object.keys(g).length + Object.keys(w).length;
  // @ts-expect-error: betas is a pair of numbers
  new AdamW(random, 1e-3, { betas: 0.9 });
  act.free();
  cache.free();
  plain.free();
  return y.length + masked.length + p.length + d.length + len + limit + Number(f16) + names.length
    + sizes + (c.output?.length ?? 0) + mapsOutput.length + search.length + selection.length + mapSizes
    + all.queryRows.length + trainedSizes;
}
