/**
 * GGUF tensors on the GPU, kept in their file type: the raw ggml blocks are copied byte for byte into
 * `array<u32>` storage buffers and the kernels dequantise in registers (see `wgsl/dequant.wgsl`).
 *
 * A matrix of ggml shape `[cols, rows]` is `rows` rows of `cols / blockSize` consecutive blocks, so a row is
 * `rowBytes` bytes and rows need not start 4-byte aligned. A tensor larger than the device's largest storage
 * binding is split by rows into several buffers ({@link GpuWeightPart}); the ops dispatch once per part.
 *
 * @module
 */

import { BadFileError, OutOfMemoryError, UnsupportedError } from "../errors.ts";
import type { GGUFFile, TensorInfo } from "../gguf/reader.ts";
import { type GGMLTypeInfo, typeInfo } from "../gguf/types.ts";
import { formatBytes, type Gpu } from "./device.ts";
import { loadShader } from "./shader.ts";

/** One buffer holding the consecutive rows `firstRow .. firstRow + rows` of a weight. */
export interface GpuWeightPart {
  /** Storage buffer with the raw blocks; row `firstRow + i` starts at byte `i · rowBytes`. */
  readonly buffer: GPUBuffer;
  /** Index of the first row held in this part. */
  readonly firstRow: number;
  /** Number of rows held in this part. */
  readonly rows: number;
}

/** Options for uploading a {@link GpuWeight}. */
export interface GpuWeightOptions {
  /**
   * Largest byte size of one part (default: the device's `maxStorageBufferBindingSize`, capped below 4 GiB
   * so byte offsets fit in u32). Mostly for tests of the split path.
   */
  maxPartBytes?: number;
  /** Bytes per upload chunk when streaming from a file (default 4 MiB, rounded down to whole rows). */
  chunkBytes?: number;
}

/**
 * A source of tensor bytes that can be read in pieces, e.g. a GGUF file: `read(offset, length)` returns
 * `length` bytes starting `offset` bytes into the tensor's data.
 */
export interface TensorSource {
  /** Tensor name, used in error messages. */
  readonly name: string;
  /** ggml type number. */
  readonly type: number;
  /** ggml shape: `[cols]` or `[cols, rows]` (higher dimensions fold into rows). */
  readonly shape: readonly number[];
  /** Reads `length` bytes at `offset` within the tensor data. */
  read(offset: number, length: number): Promise<Uint8Array> | Uint8Array;
}

const DEFAULT_CHUNK_BYTES = 4 << 20;

/** One GGUF tensor resident on the GPU in its own type, possibly split by rows into several buffers. */
export class GpuWeight {
  /** Tensor name (for errors and labels). */
  readonly name: string;
  /** The type's entry of the type table (block geometry, CPU dequantiser). */
  readonly info: GGMLTypeInfo;
  /** Elements per row (ggml ne[0]). */
  readonly cols: number;
  /** Number of rows (product of the higher ggml dimensions). */
  readonly rows: number;
  /** Bytes per row: `cols / blockSize · bytesPerBlock`. */
  readonly rowBytes: number;
  /** The buffers, in row order. */
  readonly parts: readonly GpuWeightPart[];

  private constructor(
    name: string,
    info: GGMLTypeInfo,
    cols: number,
    rows: number,
    parts: GpuWeightPart[],
  ) {
    this.name = name;
    this.info = info;
    this.cols = cols;
    this.rows = rows;
    this.rowBytes = (cols / info.blockSize) * info.bytesPerBlock;
    this.parts = parts;
  }

  /** ggml type number. */
  get type(): number {
    return this.info.type;
  }

  /** Total bytes of the tensor data. */
  get byteLength(): number {
    return this.rows * this.rowBytes;
  }

  /**
   * Uploads a tensor from a {@link TensorSource}, streaming it in chunks of whole rows (never the whole
   * tensor in memory at once).
   */
  static async upload(gpu: Gpu, source: TensorSource, options: GpuWeightOptions = {}): Promise<GpuWeight> {
    const { info, cols, rows, rowBytes } = checkShape(source.name, source.type, source.shape);
    const parts = allocateParts(gpu, source.name, rows, rowBytes, options);
    // A multiple of 4 rows, so every chunk but a part's last starts and ends 4-byte aligned.
    const chunkRows = 4 *
      Math.max(1, Math.floor((options.chunkBytes ?? DEFAULT_CHUNK_BYTES) / (4 * rowBytes)));
    for (const part of parts) {
      for (let r = 0; r < part.rows; r += chunkRows) {
        const n = Math.min(chunkRows, part.rows - r);
        const bytes = await source.read((part.firstRow + r) * rowBytes, n * rowBytes);
        if (bytes.byteLength !== n * rowBytes) {
          throw new BadFileError(
            `tensor ${source.name}: read ${bytes.byteLength} bytes at row ${part.firstRow + r}, ${
              n * rowBytes
            } expected (file truncated?)`,
          );
        }
        writePadded(gpu, part.buffer, r * rowBytes, bytes);
      }
    }
    return new GpuWeight(source.name, info, cols, rows, parts);
  }

  /** Uploads tensor `info` of an open GGUF file, streamed in chunks of whole rows. */
  static fromGGUF(
    gpu: Gpu,
    file: GGUFFile,
    info: TensorInfo,
    options: GpuWeightOptions = {},
  ): Promise<GpuWeight> {
    return GpuWeight.upload(gpu, {
      name: info.name,
      type: info.type,
      shape: info.shape,
      read: (offset, length) => file.readBytes(info, offset, length),
    }, options);
  }

  /** Uploads a tensor whose bytes are already in memory (tests, small tensors). */
  static fromBytes(
    gpu: Gpu,
    name: string,
    type: number,
    shape: readonly number[],
    bytes: Uint8Array,
    options: GpuWeightOptions = {},
  ): GpuWeight {
    const { info, cols, rows, rowBytes } = checkShape(name, type, shape);
    if (bytes.byteLength !== rows * rowBytes) {
      throw new BadFileError(
        `tensor ${name}: ${bytes.byteLength} bytes given, ${rows * rowBytes} expected for ${info.name} [${
          shape.join(", ")
        }]`,
      );
    }
    const parts = allocateParts(gpu, name, rows, rowBytes, options);
    for (const part of parts) {
      writePadded(
        gpu,
        part.buffer,
        0,
        bytes.subarray(part.firstRow * rowBytes, (part.firstRow + part.rows) * rowBytes),
      );
    }
    return new GpuWeight(name, info, cols, rows, parts);
  }

  /** Frees the GPU buffers. */
  destroy(): void {
    for (const part of this.parts) part.buffer.destroy();
  }
}

function checkShape(name: string, type: number, shape: readonly number[]) {
  const info = typeInfo(type, `tensor ${name}`);
  if (!DEQUANT_SECTIONS.includes(info.name)) {
    throw new UnsupportedError(`tensor ${name}: type ${info.name} has no GPU kernel`);
  }
  if (shape.length < 1 || shape.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new BadFileError(`tensor ${name}: invalid shape [${shape.join(", ")}]`);
  }
  const cols = shape[0];
  const rows = shape.slice(1).reduce((a, b) => a * b, 1);
  if (cols % info.blockSize !== 0) {
    throw new BadFileError(
      `tensor ${name}: row length ${cols} is not a multiple of the ${info.name} block size ${info.blockSize}`,
    );
  }
  const rowBytes = (cols / info.blockSize) * info.bytesPerBlock;
  if (!Number.isSafeInteger(rows * rowBytes)) {
    throw new BadFileError(`tensor ${name}: shape [${shape.join(", ")}] is too large`);
  }
  return { info, cols, rows, rowBytes };
}

function allocateParts(
  gpu: Gpu,
  name: string,
  rows: number,
  rowBytes: number,
  options: GpuWeightOptions,
): GpuWeightPart[] {
  const deviceMax = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize, 2 ** 32 - 4);
  const maxPart = Math.min(options.maxPartBytes ?? deviceMax, deviceMax);
  // Rows per part such that the buffer, rounded up to 4 bytes, stays within the limit.
  const rowsPerPart = Math.floor((maxPart - 3) / rowBytes);
  if (rowsPerPart < 1) {
    throw new OutOfMemoryError(
      `tensor ${name}: one row is ${formatBytes(rowBytes)}, more than the largest storage binding (${
        formatBytes(maxPart)
      })`,
    );
  }
  const parts: GpuWeightPart[] = [];
  for (let firstRow = 0; firstRow < rows; firstRow += rowsPerPart) {
    const n = Math.min(rowsPerPart, rows - firstRow);
    const label = parts.length === 0 && n === rows ? name : `${name}[rows ${firstRow}..${firstRow + n})`;
    parts.push({ buffer: gpu.buffer(label, n * rowBytes), firstRow, rows: n });
  }
  return parts;
}

/**
 * Writes `bytes` at byte `offset` (a multiple of 4) of `buffer`; `queue.writeBuffer` needs 4-byte sizes, so a
 * ragged tail goes out as one zero-padded word.
 */
function writePadded(gpu: Gpu, buffer: GPUBuffer, offset: number, bytes: Uint8Array): void {
  const whole = bytes.byteLength - (bytes.byteLength % 4);
  if (whole > 0) gpu.device.queue.writeBuffer(buffer, offset, bytes as Uint8Array<ArrayBuffer>, 0, whole);
  if (whole < bytes.byteLength) {
    const last = new Uint8Array(4);
    last.set(bytes.subarray(whole));
    gpu.device.queue.writeBuffer(buffer, offset + whole, last);
  }
}

/** Names of the type sections of `wgsl/dequant.wgsl`, i.e. the types the GPU kernels read. */
export const DEQUANT_SECTIONS: readonly string[] = [
  "F32",
  "F16",
  "BF16",
  "Q8_0",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
];

/**
 * WGSL source of the dequantisation library for one type: the COMMON helpers plus that type's section of
 * `wgsl/dequant.wgsl`, to be spliced into a kernel through its `{{DEQUANT}}` text define.
 */
export function dequantSource(typeName: string): string {
  const text = loadShader("dequant");
  const sections = new Map<string, string>();
  const parts = text.split(/^\/\/ ==== (\w+) ====$/m);
  for (let i = 1; i + 1 < parts.length; i += 2) sections.set(parts[i], parts[i + 1]);
  const common = sections.get("COMMON");
  const body = sections.get(typeName);
  if (common === undefined || body === undefined) {
    throw new UnsupportedError(`type ${typeName} has no GPU dequantisation kernel`);
  }
  return common + body;
}
