// @ts-check
// Honest capability detection: what this browser can really run, and why not where it
// cannot. Nothing here is assumed from the user agent string.

// A minimal module using one SIMD instruction (i32x4.splat); validates only where
// WebAssembly SIMD is supported.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0,
  253, 15, 253, 98, 11,
]);

// WebGPU's and WebNN's interfaces are not in TypeScript's DOM library (and no typings
// package for them is installed): the page reads them untyped.
const nav = /** @type {any} */ (navigator);

// Adapters that are CPU rasterisers rather than GPUs, by architecture or description.
const SOFTWARE_ADAPTER = /swiftshader|llvmpipe|lavapipe|softpipe|warp|microsoft basic render/i;

export async function detectWebGpu() {
  if (!('gpu' in navigator)) {
    return { available: false, reason: 'navigator.gpu is not exposed (WebGPU disabled or unsupported in this build; Firefox needs dom.webgpu.enabled)' };
  }
  let adapter;
  try {
    adapter = await nav.gpu.requestAdapter();
  } catch (e) {
    return { available: false, reason: `requestAdapter() threw: ${e}` };
  }
  if (!adapter) {
    return {
      available: false,
      reason: 'requestAdapter() returned null: no WebGPU adapter (on Linux Chromium needs --enable-unsafe-webgpu; Firefox needs a Vulkan driver and, for a software one, gfx.webgpu.ignore-blocklist)',
    };
  }
  const info = adapter.info || {};
  const isFallbackAdapter = Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter);
  const text = `${info.vendor} ${info.architecture} ${info.description} ${info.device}`;
  const software = isFallbackAdapter || SOFTWARE_ADAPTER.test(text);
  return {
    available: true,
    adapter: {
      vendor: info.vendor || '',
      architecture: info.architecture || '',
      device: info.device || '',
      description: info.description || '',
      is_fallback_adapter: isFallbackAdapter,
      kind: software ? 'software' : 'hardware',
      features: [...adapter.features].sort(),
      max_buffer_size: adapter.limits.maxBufferSize,
      max_storage_buffer_binding_size: adapter.limits.maxStorageBufferBindingSize,
    },
  };
}

export async function detectWebNn() {
  const devices = {};
  for (const deviceType of ['cpu', 'gpu', 'npu']) {
    if (!('ml' in navigator)) {
      devices[deviceType] = {
        available: false,
        reason: 'navigator.ml is not exposed: this browser build has no WebNN (Chromium needs the WebMachineLearningNeuralNetwork feature and a platform backend; Firefox does not implement WebNN)',
      };
      continue;
    }
    try {
      const ctx = await nav.ml.createContext({ deviceType });
      devices[deviceType] = { available: true };
      ctx.destroy?.();
    } catch (e) {
      devices[deviceType] = { available: false, reason: `navigator.ml.createContext({deviceType: '${deviceType}'}) failed: ${e}` };
    }
  }
  return devices;
}

export function detectWasm() {
  return {
    simd: WebAssembly.validate(SIMD_PROBE),
    threads: typeof SharedArrayBuffer !== 'undefined' && self.crossOriginIsolated === true,
    cross_origin_isolated: self.crossOriginIsolated === true,
    hardware_concurrency: navigator.hardwareConcurrency || 1,
  };
}

export async function detectAll() {
  const [webgpu, webnn] = await Promise.all([detectWebGpu(), detectWebNn()]);
  return { user_agent: navigator.userAgent, webgpu, webnn, wasm: detectWasm() };
}
