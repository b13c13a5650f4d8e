// WebGPU calls the package makes on the page's behalf (web/src/interop.rs): copies between the
// page's GPUBuffers and the layer's own, on the layer's device and queue, in submission order
// with the layer's own work; and the device-lost hook.
import { compattnError } from './errors.js';
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

// Calls `hook` once with a CompattnError of code DEVICE_LOST when `device` is lost (the
// `onDeviceLost` option). An exception the hook throws is the page's: it goes to the console.
export function onDeviceLost(device, hook) {
  device.lost.then((info) => {
    hook(compattnError('DEVICE_LOST',
      `the WebGPU device was lost (${info.reason}): ${info.message || 'no message'}; ` +
      'load the layer again to open a new device'));
  });
}
