/**
 * Cooperative matrices (the GPU's matrix units, e.g. tensor cores) through wgpu's
 * `wgpu-cooperative-matrix` feature and WGSL's `enable wgpu_cooperative_matrix;`: whether this device
 * runs them correctly, and how its WGSL spells row-major and column-major loads and stores. The answer
 * comes from running `wgsl/coop_probe.wgsl` once, when the device opens: the spelling of the layouts is
 * not settled across wgpu versions, and a product that comes out transposed would still compile.
 *
 * @module
 */

import { firstLine } from "../errors.ts";
import { loadShader } from "./shader.ts";

/** The feature name under which Deno's WebGPU offers cooperative matrices. */
export const COOP_MATRIX_FEATURE = "wgpu-cooperative-matrix" as GPUFeatureName;

/** How the prefill kernels spell their cooperative-matrix operations on a device. */
export interface CoopMatrixSupport {
  /**
   * True where the fragments are plain WGSL (`wgsl/coop_fragments_emulated.wgsl`): the same kernels on a
   * GPU without matrix units, far slower; for tests.
   */
  emulated: boolean;
  /** The builtin that loads a fragment from row-major memory (`coopLoadT` or `coopLoad`). */
  loadRowMajor: string;
  /** The builtin that stores a fragment to row-major memory (`coopStoreT` or `coopStore`). */
  storeRowMajor: string;
}

/** The emulated fragments (no matrix units): see {@link CoopMatrixSupport.emulated}. */
export const EMULATED_COOP_MATRIX: CoopMatrixSupport = {
  emulated: true,
  loadRowMajor: "",
  storeRowMajor: "",
};

/** What {@link probeCoopMatrix} found: the support, or why there is none (one line). */
export interface CoopMatrixProbe {
  support?: CoopMatrixSupport;
  reason: string;
}

/** Four 16 × 16 matrices of small integers (exact in f16, their products exact in f32), A0 B0 A1 B1. */
export function probeMatrices(): Float32Array<ArrayBuffer> {
  const m = new Float32Array(4 * 256);
  for (let q = 0; q < 4; q++) {
    for (let i = 0; i < 16; i++) {
      for (let j = 0; j < 16; j++) m[q * 256 + i * 16 + j] = ((i * (q + 2) + j * (2 * q + 3) + q) % 7) - 3;
    }
  }
  return m;
}

/** The 16 × 16 product a · b of row-major matrices at `ao` and `bo` of `m`. */
function product(m: Float32Array, ao: number, bo: number): Float32Array {
  const out = new Float32Array(256);
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 16; j++) {
      let s = 0;
      for (let k = 0; k < 16; k++) s += m[ao + i * 16 + k] * m[bo + k * 16 + j];
      out[i * 16 + j] = s;
    }
  }
  return out;
}

/** The probe's input: four 16 × 16 matrices, A0 B0 A1 B1. */
const PROBE_INPUT = probeMatrices();

/**
 * What the probe's output `got` (two 16 × 16 products) says: A·B means `coopLoadT` / `coopStoreT` are the
 * row-major builtins, B·A that `coopLoad` / `coopStore` are; anything else, no support.
 */
export function readProbe(got: Float32Array): CoopMatrixProbe {
  const ab = [product(PROBE_INPUT, 0, 256), product(PROBE_INPUT, 512, 768)];
  const ba = [product(PROBE_INPUT, 256, 0), product(PROBE_INPUT, 768, 512)];
  const rowMajor = (load: string, store: string): CoopMatrixProbe => ({
    support: { emulated: false, loadRowMajor: load, storeRowMajor: store },
    reason: `cooperative matrices: ${load} / ${store} are row-major`,
  });
  if (equal(got, 0, ab[0]) && equal(got, 256, ab[1])) return rowMajor("coopLoadT", "coopStoreT");
  if (equal(got, 0, ba[0]) && equal(got, 256, ba[1])) return rowMajor("coopLoad", "coopStore");
  return { reason: "the cooperative-matrix probe computed a wrong product (not used)" };
}

function equal(got: Float32Array, offset: number, want: Float32Array): boolean {
  return want.every((v, i) => got[offset + i] === v);
}

/**
 * Runs `wgsl/coop_probe.wgsl` on `device` (opened with {@link COOP_MATRIX_FEATURE} and `shader-f16`): two
 * subgroups each multiply their own pair of matrices, loaded and stored with `coopLoadT` / `coopStoreT`.
 * A·B back means those are the row-major builtins, B·A that they are the column-major ones; anything
 * else (a compile error, a wrong product, invocations 32s..32s+31 not forming a subgroup) means no support.
 */
export async function probeCoopMatrix(device: GPUDevice): Promise<CoopMatrixProbe> {
  const code = loadShader("coop_probe").replaceAll("{{LOAD}}", "coopLoadT").replaceAll(
    "{{STORE}}",
    "coopStoreT",
  );
  device.pushErrorScope("validation");
  let pipeline: GPUComputePipeline;
  try {
    const module = device.createShaderModule({ label: "coop_probe", code });
    pipeline = await device.createComputePipelineAsync({
      label: "coop_probe",
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
  } catch (e) {
    await device.popErrorScope();
    return { reason: `the cooperative-matrix probe did not compile: ${firstLine(e)}` };
  }
  const compileError = await device.popErrorScope();
  if (compileError) {
    return { reason: `the cooperative-matrix probe did not compile: ${firstLine(compileError)}` };
  }

  const usage = 0x80 /* STORAGE */ | 0x08 /* COPY_DST */ | 0x04; /* COPY_SRC */
  const src = device.createBuffer({ label: "coop_probe src", size: PROBE_INPUT.byteLength, usage });
  device.queue.writeBuffer(src, 0, PROBE_INPUT);
  const dst = device.createBuffer({ label: "coop_probe dst", size: 512 * 4, usage });
  const staging = device.createBuffer({ size: 512 * 4, usage: 0x01 /* MAP_READ */ | 0x08 /* COPY_DST */ });
  try {
    device.pushErrorScope("validation");
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(
      0,
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }],
      }),
    );
    pass.dispatchWorkgroups(1);
    pass.end();
    encoder.copyBufferToBuffer(dst, 0, staging, 0, 512 * 4);
    device.queue.submit([encoder.finish()]);
    const runError = await device.popErrorScope();
    if (runError) return { reason: `the cooperative-matrix probe did not run: ${firstLine(runError)}` };
    await staging.mapAsync(0x0001 /* READ */);
    const got = new Float32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    return readProbe(got);
  } catch (e) {
    return { reason: `the cooperative-matrix probe failed: ${firstLine(e)}` };
  } finally {
    src.destroy();
    dst.destroy();
    staging.destroy();
  }
}
