// WebGPU calls the package makes on the page's behalf (web/src/interop.rs): copies between the
// page's GPUBuffers and the layer's own, on the layer's device and queue, in submission order
// with the layer's own work.
export function isGpuBuffer(value) {
  return typeof GPUBuffer !== 'undefined' && value instanceof GPUBuffer;
}

export function bufferSize(buffer) {
  return buffer.size;
}

export function bufferUsage(buffer) {
  return buffer.usage;
}

export function copyBuffer(device, source, destination, bytes) {
  const encoder = device.createCommandEncoder({ label: 'compositional-attention io copy' });
  encoder.copyBufferToBuffer(source, 0, destination, 0, bytes);
  device.queue.submit([encoder.finish()]);
}

export function pushValidation(device) {
  device.pushErrorScope('validation');
}

export function popValidation(device) {
  return device.popErrorScope().then((error) => (error ? error.message : null));
}
