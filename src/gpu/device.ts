/**
 * The WebGPU device: adapter selection, real limits, `shader-f16`, a pipeline cache keyed by kernel and
 * specialisation, a pool of reusable transient buffers (`./buffer_pool.ts`), and small helpers to move
 * data in and out. A lost or destroyed device makes later work a one-line `DeviceError`. One {@link Gpu}
 * per process is the norm ({@link getGpu}); kernels take it as their first argument.
 *
 * @module
 */

import { DeviceError, firstLine, OutOfMemoryError } from "../errors.ts";
import { specialiseOverrides, unrollLoops } from "./unroll.ts";
import { includeShaders, loadShader, preloadShaders, SHADER_NAMES, shadersAreLocal } from "./shader.ts";
import { COOP_MATRIX_FEATURE, type CoopMatrixSupport, probeCoopMatrix } from "./coop_probe.ts";
import { BufferPool } from "./buffer_pool.ts";

/** Storage | copy-dst | copy-src: the usage of almost every buffer we make. */
export const STORAGE_USAGE = 0x80 /* STORAGE */ | 0x08 /* COPY_DST */ | 0x04; /* COPY_SRC */

/** Map-read | copy-dst: the usage of the staging buffers {@link Gpu.read} copies through. */
const READ_STAGING_USAGE = 0x01 /* MAP_READ */ | 0x08; /* COPY_DST */

/** Where adapters come from: the runtime's `navigator.gpu`, or a stand-in (e.g. one that finds none). */
export type AdapterSource = Pick<GPU, "requestAdapter">;

/**
 * The one-line error for a runtime that found no WebGPU adapter, saying how to get one; `backendsTried`
 * names the backends the runtime was limited to, when this process chose them.
 */
export function noAdapterError(backendsTried?: string): DeviceError {
  return new DeviceError(
    "no WebGPU adapter found: install a GPU driver with Vulkan support, or on a CPU-only Linux " +
      "`apt-get install mesa-vulkan-drivers` (lavapipe); `--backend cpu` runs without a GPU" +
      (backendsTried ? ` (only ${backendsTried} was tried; ${BACKEND_VARIABLE}=gl tries OpenGL)` : ""),
  );
}

/** Options for {@link Gpu.create}. */
export interface GpuOptions {
  /** Ask for timestamp queries (per-kernel profiling) when the adapter has them. */
  profile?: boolean;
  /** Refuse `shader-f16` even when present (tests the f32 fallbacks). */
  disableF16?: boolean;
  /**
   * Ask for cooperative matrices (the GPU's matrix units; wgpu's experimental `wgpu-cooperative-matrix`)
   * where the adapter offers them, and probe them once (`./coop_probe.ts`). Default false: only the
   * cooperative-matrix prefill uses them, and it asks.
   */
  coopMatrix?: boolean;
  /** Leave WGSL's `subgroups` off even when the adapter offers them. */
  disableSubgroups?: boolean;
}

/** A compiled compute pipeline together with what a dispatch needs to know about it. */
export interface Kernel {
  /** Cache key: shader name plus its specialisation. */
  readonly key: string;
  /** The pipeline, with an automatic bind-group layout (group 0). */
  readonly pipeline: GPUComputePipeline;
}

/** The device and everything derived from it once: limits, features, the pipeline cache. */
export class Gpu {
  /** The WebGPU device. */
  readonly device: GPUDevice;
  /** The adapter's description, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly description: string;
  /** Whether WGSL `enable f16;` may be used. */
  readonly hasF16: boolean;
  /** Whether timestamp queries are available on this device. */
  readonly hasTimestamps: boolean;
  /** Whether this is a software adapter (lavapipe, SwiftShader): slow, keep shapes small. */
  readonly isFallback: boolean;
  /**
   * How this device's cooperative matrices (matrix units) are spelled, when it has working ones
   * (`wgpu-cooperative-matrix`, 16 × 16 f16 fragments with f32 sums, subgroups of 32; checked by running a
   * probe when the device opened, see `./coop_probe.ts`).
   */
  readonly coopMatrix: CoopMatrixSupport | undefined;
  /** One line on the cooperative matrices: how they are used, or why not. */
  readonly coopMatrixNote: string;
  /**
   * The subgroup sizes (the smallest and largest the GPU may use) when WGSL's `subgroups` are on (the
   * adapter offers them and `disableSubgroups` is not set), else undefined.
   */
  readonly subgroups: { minSize: number; maxSize: number } | undefined;
  /** Every feature the adapter offers (sorted), whether or not the device was opened with it. */
  readonly adapterFeatures: readonly string[];
  /**
   * Which of the runtime's backends were tried, in one line: e.g. "vulkan (wgkv's choice on Linux; set
   * DENO_WEBGPU_BACKEND to choose)", "vulkan,gl (DENO_WEBGPU_BACKEND)" or "the runtime's default (all)".
   */
  readonly backends: string;
  /** Reusable buffers for transient work, e.g. the staging copies of {@link Gpu.read}. */
  readonly buffers: BufferPool;
  readonly #pipelines = new Map<string, Kernel>();
  #lostReason: string | undefined;
  #destroyed = false;

  private constructor(
    device: GPUDevice,
    description: string,
    isFallback: boolean,
    coop: { support?: CoopMatrixSupport; reason: string },
    subgroups: { minSize: number; maxSize: number } | undefined,
    adapterFeatures: readonly string[],
    backends: string,
  ) {
    this.device = device;
    this.description = description;
    this.isFallback = isFallback;
    this.coopMatrix = coop.support;
    this.coopMatrixNote = coop.reason;
    this.subgroups = subgroups;
    this.adapterFeatures = adapterFeatures;
    this.backends = backends;
    this.hasF16 = device.features.has("shader-f16");
    this.hasTimestamps = device.features.has("timestamp-query");
    this.buffers = new BufferPool(device);
    device.lost.then((info) => this.#noteLoss(info));
  }

  /**
   * Opens the high-performance adapter with its real limits; a one-line error when there is none.
   * `webgpu` is where adapters come from (default: the runtime's `navigator.gpu`).
   */
  static async create(
    options: GpuOptions = {},
    webgpu: AdapterSource | undefined = runtimeWebGpu(),
  ): Promise<Gpu> {
    const chosenBackends = prepareRuntimeEnvironment();
    if (!webgpu) {
      throw new DeviceError(
        "WebGPU is not available in this runtime (run with Deno 2.x; in a browser use one with WebGPU enabled)",
      );
    }
    if (!shadersAreLocal()) await preloadShaders([...SHADER_NAMES]);
    const adapter = await webgpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) throw noAdapterError(chosenBackends);
    const wanted: GPUFeatureName[] = [];
    if (adapter.features.has("shader-f16") && !options.disableF16) wanted.push("shader-f16");
    if (options.profile && adapter.features.has("timestamp-query")) wanted.push("timestamp-query");
    const info = adapter.info as GPUAdapterInfo & {
      isFallbackAdapter?: boolean;
      subgroupMinSize?: number;
      subgroupMaxSize?: number;
    };
    const subgroupsOn = adapter.features.has("subgroups" as GPUFeatureName) && !options.disableSubgroups;
    if (subgroupsOn) wanted.push("subgroups" as GPUFeatureName);
    const coopBlocker = coopMatrixBlocker(adapter, options, wanted.includes("shader-f16"));
    const l = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxBufferSize: l.maxBufferSize,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    };
    let device: GPUDevice | undefined;
    let coop: { support?: CoopMatrixSupport; reason: string } = { reason: coopBlocker ?? "" };
    let opener = adapter;
    if (coopBlocker === undefined) {
      // Cooperative matrices are an experimental wgpu feature: where the device will not open with them,
      // or the probe finds them wrong (a device that might even be lost), a fresh adapter opens a device
      // without them (an adapter opens one device).
      const features = [...wanted, COOP_MATRIX_FEATURE];
      try {
        device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
        coop = await probeCoopMatrix(device);
      } catch (e) {
        coop = { reason: `the device did not open with ${COOP_MATRIX_FEATURE}: ${firstLine(e)}` };
      }
      if (coop.support === undefined) {
        device?.destroy();
        device = undefined;
        opener = (await webgpu.requestAdapter({ powerPreference: "high-performance" })) ?? adapter;
      }
    }
    let subgroupsOpen = subgroupsOn;
    if (device === undefined) {
      try {
        device = await opener.requestDevice({ requiredFeatures: wanted, requiredLimits });
      } catch (e) {
        if (!subgroupsOn) throw new DeviceError(`could not open the WebGPU device: ${(e as Error).message}`);
        // Subgroups are only an option of a few kernels: a device that will not open with them opens without.
        const fresh = (await webgpu.requestAdapter({ powerPreference: "high-performance" })) ?? adapter;
        const plain = wanted.filter((f) => f !== "subgroups");
        try {
          device = await fresh.requestDevice({ requiredFeatures: plain, requiredLimits });
        } catch (e2) {
          throw new DeviceError(`could not open the WebGPU device: ${(e2 as Error).message}`);
        }
        subgroupsOpen = false;
      }
    }
    const description = info.description || info.device || info.vendor || "unknown adapter";
    const fallback = Boolean(info.isFallbackAdapter) || /llvmpipe|lavapipe|swiftshader/i.test(description);
    const subgroups = subgroupsOpen && device.features.has("subgroups" as GPUFeatureName)
      ? { minSize: info.subgroupMinSize ?? 0, maxSize: info.subgroupMaxSize ?? 0 }
      : undefined;
    return new Gpu(
      device,
      description,
      fallback,
      coop,
      subgroups,
      [...adapter.features].sort(),
      describeBackends(chosenBackends),
    );
  }

  /** The device's limits (as granted, i.e. the adapter's real ones). */
  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** Throws a {@link DeviceError} if the device was lost or destroyed. */
  checkAlive(): void {
    const gone = this.#goneError();
    if (gone) throw gone;
  }

  /**
   * The one-line {@link DeviceError} for a failed read of `what` (e.g. a rejected `mapAsync`): the device's
   * loss when it went (given a turn of the event loop to be reported: a mapping fails before the device's
   * `lost` promise settles), else `error` itself when it is one, else `error`'s first line.
   */
  async readFailure(error: unknown, what: string): Promise<DeviceError> {
    await this.#settleLoss();
    return this.#goneError() ??
      (error instanceof DeviceError
        ? error
        : new DeviceError(`reading ${what} back from the GPU failed: ${firstLine(error)}`));
  }

  /**
   * Maps `size` bytes (default: the rest) of `buffer` from `offset` for reading, once the GPU work writing
   * it is done. A mapping that fails, or a device lost meanwhile, becomes a one-line {@link DeviceError}
   * naming `what` ({@link Gpu.readFailure}); the caller then may not reuse the buffer (it may stay pending).
   */
  async mapForReading(buffer: GPUBuffer, what: string, offset = 0, size?: number): Promise<void> {
    try {
      await buffer.mapAsync(GPUMapMode.READ, offset, size);
    } catch (e) {
      throw await this.readFailure(e, what);
    }
    this.checkAlive();
  }

  /**
   * Returns the compute pipeline for shader `name` (a file in `wgsl/` without extension) specialised by
   * `constants` (WGSL `override` values) and `defines` (text substitutions of `{{NAME}}` placeholders, for
   * what `override` cannot reach, e.g. element types), after `// #include NAME` lines are replaced by
   * `wgsl/NAME.wgsl`. Cached by name + specialisation. Overrides given a
   * value become `const` declarations and loops marked `// @unroll` are unrolled (see `./unroll.ts`), so
   * register blocks sized or walked by them stay in registers.
   */
  kernel(
    name: string,
    constants: Record<string, number> = {},
    defines: Record<string, string> = {},
    entryPoint = "main",
  ): Kernel {
    // Override constants are named, so their order is no part of the specialisation; defines are
    // substituted in turn (a value may hold another placeholder), so theirs is.
    const sortedConstants = Object.fromEntries(Object.entries(constants).sort(([a], [b]) => a < b ? -1 : 1));
    const key = `${name}:${entryPoint}:${JSON.stringify(sortedConstants)}:${JSON.stringify(defines)}`;
    const cached = this.#pipelines.get(key);
    if (cached) return cached;
    this.checkAlive();
    let code = includeShaders(loadShader(name));
    for (const [k, v] of Object.entries(defines)) code = code.replaceAll(`{{${k}}}`, v);
    const specialised = specialiseOverrides(code, constants);
    code = unrollLoops(specialised.code);
    const module = this.device.createShaderModule({ label: name, code });
    const pipeline = this.device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint, constants: specialised.overrides },
    });
    const kernel = { key, pipeline };
    this.#pipelines.set(key, kernel);
    return kernel;
  }

  /** Makes a bind group for `kernel` from buffers (or buffer slices) in binding order 0, 1, 2, … */
  bind(kernel: Kernel, resources: (GPUBuffer | GPUBufferBinding)[]): GPUBindGroup {
    return this.device.createBindGroup({
      layout: kernel.pipeline.getBindGroupLayout(0),
      entries: resources.map((r, binding) => ({
        binding,
        resource: r instanceof GPUBuffer ? { buffer: r } : r,
      })),
    });
  }

  /**
   * Creates a storage buffer of `size` bytes (rounded up to 4), optionally filled with `data`.
   * Sizes past the device limit become an {@link OutOfMemoryError} naming `label` and the numbers.
   */
  buffer(label: string, size: number, data?: ArrayBufferView, usage: number = STORAGE_USAGE): GPUBuffer {
    const bytes = Math.max(4, Math.ceil(size / 4) * 4);
    const max = this.limits.maxBufferSize;
    if (bytes > max) {
      throw new OutOfMemoryError(
        `${label}: ${formatBytes(bytes)} (${bytes} B) asked, but this GPU's largest buffer is ` +
          `${formatBytes(max)} (${max} B)`,
      );
    }
    const buf = this.device.createBuffer({ label, size: bytes, usage, mappedAtCreation: data !== undefined });
    if (data) {
      const dst = new Uint8Array(buf.getMappedRange());
      dst.set(new Uint8Array(data.buffer, data.byteOffset, Math.min(data.byteLength, bytes)));
      buf.unmap();
    }
    return buf;
  }

  /** Creates a uniform buffer holding `data` (padded to 16 bytes), writable with `queue.writeBuffer`. */
  uniform(label: string, data: ArrayBufferView): GPUBuffer {
    const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
    const buf = this.device.createBuffer({ label, size, usage: 0x40 /* UNIFORM */ | 0x08 /* COPY_DST */ });
    this.device.queue.writeBuffer(buf, 0, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    return buf;
  }

  /** Records one dispatch of `kernel` into `pass` (or a fresh encoder when none is given, submitted at once). */
  dispatch(
    kernel: Kernel,
    resources: (GPUBuffer | GPUBufferBinding)[],
    workgroups: [number, number?, number?],
    pass?: GPUComputePassEncoder,
  ): void {
    this.checkAlive();
    const group = this.bind(kernel, resources);
    const [x, y = 1, z = 1] = workgroups;
    const max = this.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new Error(`${kernel.key}: dispatch (${x}, ${y}, ${z}) exceeds ${max} workgroups per dimension`);
    }
    if (pass) {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y, z);
      return;
    }
    const encoder = this.device.createCommandEncoder();
    const p = encoder.beginComputePass();
    p.setPipeline(kernel.pipeline);
    p.setBindGroup(0, group);
    p.dispatchWorkgroups(x, y, z);
    p.end();
    this.device.queue.submit([encoder.finish()]);
  }

  /**
   * Copies `size` bytes (default: all) of `buffer` from `offset` back to the CPU, through a staging buffer
   * of {@link Gpu.buffers}. A lost device or failed mapping is a {@link DeviceError}.
   */
  async read(buffer: GPUBuffer, offset: number = 0, size?: number): Promise<ArrayBuffer> {
    this.checkAlive();
    size ??= buffer.size - offset;
    const what = `'${buffer.label || "a buffer"}'`;
    const staging = this.buffers.acquire(size, READ_STAGING_USAGE, "read staging");
    try {
      const encoder = this.device.createCommandEncoder();
      encoder.copyBufferToBuffer(buffer, offset, staging, 0, size);
      this.device.queue.submit([encoder.finish()]);
      await this.mapForReading(staging, what, 0, size);
    } catch (e) {
      this.buffers.discard(staging);
      throw e;
    }
    const out = staging.getMappedRange(0, size).slice(0);
    staging.unmap();
    this.buffers.release(staging);
    return out;
  }

  /** Reads a buffer back as f32 values. */
  async readF32(buffer: GPUBuffer, offset = 0, count?: number): Promise<Float32Array> {
    return new Float32Array(await this.read(buffer, offset, count === undefined ? undefined : count * 4));
  }

  /** Reads a buffer back as u32 values. */
  async readU32(buffer: GPUBuffer, offset = 0, count?: number): Promise<Uint32Array> {
    return new Uint32Array(await this.read(buffer, offset, count === undefined ? undefined : count * 4));
  }

  /** Releases the device and the buffers of {@link Gpu.buffers}; later work is a {@link DeviceError}. */
  destroy(): void {
    this.#destroyed = true;
    this.buffers.destroy();
    this.device.destroy();
  }

  /** The error for a device that was lost or destroyed, else undefined. */
  #goneError(): DeviceError | undefined {
    if (this.#lostReason !== undefined) {
      return new DeviceError(`the GPU device was lost: ${this.#lostReason}`);
    }
    if (this.#destroyed) {
      return new DeviceError("the GPU device was destroyed and can run no more work; open a new one");
    }
    return undefined;
  }

  /** Records how the device went: a loss keeps its reason (one line), a destroy marks it destroyed. */
  #noteLoss(info: GPUDeviceLostInfo): void {
    if (info.reason === "destroyed") this.#destroyed = true;
    else this.#lostReason ??= firstLine(info.message || String(info.reason));
  }

  /**
   * Gives the device's `lost` promise one turn of the event loop to settle: a mapping rejected because the
   * device went is reported before `lost` resolves, and the error should say why.
   */
  async #settleLoss(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const turn = new Promise<undefined>((resolve) => timer = setTimeout(() => resolve(undefined), 0));
    const info = await Promise.race([this.device.lost, turn]);
    clearTimeout(timer);
    if (info) this.#noteLoss(info);
  }
}

/** The runtime's WebGPU entry point (`navigator.gpu`), when it has one. */
function runtimeWebGpu(): AdapterSource | undefined {
  return (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
}

/**
 * Why cooperative matrices are not tried on `adapter` (one line), or undefined when they are: the caller
 * must ask for them (`GpuOptions.coopMatrix`), the adapter offer them, f16 be on, and its subgroups be 32
 * wide (the kernels take invocations 32s .. 32s + 31 of a workgroup to be one subgroup).
 */
function coopMatrixBlocker(adapter: GPUAdapter, options: GpuOptions, f16: boolean): string | undefined {
  if (!options.coopMatrix) return "cooperative matrices not requested";
  if (!adapter.features.has(COOP_MATRIX_FEATURE)) return `this GPU does not offer ${COOP_MATRIX_FEATURE}`;
  if (!f16) return "cooperative matrices need shader-f16, which is off";
  const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  if (info.subgroupMinSize !== undefined && (info.subgroupMinSize !== 32 || info.subgroupMaxSize !== 32)) {
    return `this GPU's subgroups are ${info.subgroupMinSize}-${info.subgroupMaxSize} wide; the kernels assume 32`;
  }
  return undefined;
}

/** The environment variable through which Deno's WebGPU picks its backends (a comma-separated list). */
const BACKEND_VARIABLE = "DENO_WEBGPU_BACKEND";

/** The backends this process chose for the runtime (see {@link prepareRuntimeEnvironment}), if it did. */
let backendsChosenHere: string | undefined;

/**
 * Prepares the process environment before the first adapter request (the WebGPU runtime reads it when it
 * creates its instance), for this process only and only where the user has not set it:
 * - Vulkan drivers probe the Wayland socket under `$XDG_RUNTIME_DIR` and print "XDG_RUNTIME_DIR is invalid
 *   or not set" twice when it is unset (common on servers and in containers). Compute needs no window
 *   system, so point it at the temp folder.
 * - On Linux the runtime would also start its OpenGL backend, which loads the GL driver stack (EGL, and on
 *   a CPU-only machine llvmpipe with its worker threads) that no kernel here uses. Its teardown can run
 *   into the process's exit when a worker thread that opened a device ends just before (a heap-corruption
 *   abort after all work is done). `DENO_WEBGPU_BACKEND=vulkan` opens Vulkan alone; set the variable
 *   yourself (e.g. to `gl`) to choose otherwise.
 *
 * Returns the backends the runtime will try when this process chose them, else undefined.
 */
function prepareRuntimeEnvironment(): string | undefined {
  try {
    if (Deno.build.os !== "linux") return undefined;
    if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
    if (backendsChosenHere === undefined && !Deno.env.get(BACKEND_VARIABLE)) {
      Deno.env.set(BACKEND_VARIABLE, "vulkan");
      backendsChosenHere = "vulkan";
    }
    return backendsChosenHere;
  } catch {
    // No --allow-env: the driver's warning is harmless and every backend is probed.
    return undefined;
  }
}

/** {@link Gpu.backends}: the backends in effect, and who chose them. */
function describeBackends(chosenHere: string | undefined): string {
  if (chosenHere) return `${chosenHere} (wgkv's choice on Linux; set ${BACKEND_VARIABLE} to choose)`;
  let set: string | undefined;
  try {
    set = Deno.env.get(BACKEND_VARIABLE);
  } catch {
    // No --allow-env: the runtime reads it anyway; we cannot say.
  }
  return set ? `${set} (${BACKEND_VARIABLE})` : "the runtime's default (all)";
}

/** The devices {@link getGpu} opened, with the options each was opened with. */
const opened: { options: GpuOptions; gpu: Promise<Gpu> }[] = [];

/** Whether a device opened with `have` serves a caller asking `want`. */
function serves(have: GpuOptions, want: GpuOptions): boolean {
  return (!want.profile || !!have.profile) && (!want.coopMatrix || !!have.coopMatrix) &&
    !!want.disableF16 === !!have.disableF16 && !!want.disableSubgroups === !!have.disableSubgroups;
}

/**
 * A process-wide {@link Gpu}: the first device opened that serves `options` (one asked for timestamps or
 * cooperative matrices serves callers that do not ask; features turned off must match), else a new one
 * opened with them. So a later caller asking for profiling or matrix units gets them after a plain load.
 * A device that was lost or destroyed is forgotten, so the next call opens a new one.
 */
export function getGpu(options: GpuOptions = {}): Promise<Gpu> {
  const found = opened.find((o) => serves(o.options, options));
  if (found) return found.gpu;
  const entry = { options: { ...options }, gpu: Gpu.create(options) };
  const forget = () => {
    const at = opened.indexOf(entry);
    if (at >= 0) opened.splice(at, 1);
  };
  entry.gpu = entry.gpu.catch((e) => {
    forget();
    throw e;
  });
  // A device lost or destroyed serves no one: the next caller opens a fresh one.
  entry.gpu.then((gpu) => gpu.device.lost.then(forget), () => {});
  opened.push(entry);
  return entry.gpu;
}

/** Formats a byte count as e.g. "1.50 GiB". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(2)} ${units[u]}`;
}
