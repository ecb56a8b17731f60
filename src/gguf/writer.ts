/**
 * Writes GGUF v3 files: typed metadata and tensors of any type in the table. Tensor data is pulled one
 * tensor at a time (a provider callback may stream it in chunks), so multi-GB files never sit in memory.
 * The file is written to `path + ".tmp"` and renamed when complete, so a half-written file never has the
 * final name.
 *
 * @module
 */

import { BadFileError, BadFlagError, firstLine } from "../errors.ts";
import { GGUFValueType } from "./reader.ts";
import type { GGUFFile, MetadataType } from "./reader.ts";
import { tensorByteSize, typeInfo } from "./types.ts";
import type { GGMLType } from "./types.ts";

/** A scalar metadata value of a given on-disk type. */
export interface ScalarEntry {
  /** Any value type but ARRAY. */
  type: Exclude<GGUFValueType, GGUFValueType.ARRAY>;
  /** number for 8..32-bit integers and floats, number or bigint for 64-bit integers, string, boolean. */
  value: number | bigint | string | boolean;
}

/** An array metadata value: every element has `elementType` (arrays of arrays are not written). */
export interface ArrayEntry {
  /** Always ARRAY. */
  type: GGUFValueType.ARRAY;
  /** Type of every element. */
  elementType: Exclude<GGUFValueType, GGUFValueType.ARRAY>;
  /** The elements. */
  value: (number | bigint | string | boolean)[];
}

/** A typed metadata value to write. */
export type MetadataEntry = ScalarEntry | ArrayEntry;

/** Tensor data: the raw blocks, or a callback producing them (all at once or as a sequence of chunks). */
export type TensorData =
  | Uint8Array
  | (() =>
    | Uint8Array
    | Promise<Uint8Array>
    | Iterable<Uint8Array>
    | AsyncIterable<Uint8Array>);

/** One tensor to write. */
export interface TensorEntry {
  /** Tensor name (at most 63 UTF-8 bytes, as ggml requires). */
  name: string;
  /** Element type. */
  type: GGMLType;
  /** Dimensions in ggml order (shape[0] = row length, a multiple of the type's block size); 1 to 4. */
  shape: number[];
  /** Raw blocks, exactly tensorByteSize(type, product of shape) bytes. */
  data: TensorData;
}

/** Options of {@link writeGGUF}. */
export interface WriteOptions {
  /** Metadata in the order given; `general.alignment` (UINT32, a power of two) sets the data alignment. */
  metadata: Record<string, MetadataEntry>;
  /** Tensors in the order given. */
  tensors?: TensorEntry[];
}

/** UINT8 metadata value. */
export const u8 = (value: number): ScalarEntry => ({ type: GGUFValueType.UINT8, value });
/** INT8 metadata value. */
export const i8 = (value: number): ScalarEntry => ({ type: GGUFValueType.INT8, value });
/** UINT16 metadata value. */
export const u16 = (value: number): ScalarEntry => ({ type: GGUFValueType.UINT16, value });
/** INT16 metadata value. */
export const i16 = (value: number): ScalarEntry => ({ type: GGUFValueType.INT16, value });
/** UINT32 metadata value. */
export const u32 = (value: number): ScalarEntry => ({ type: GGUFValueType.UINT32, value });
/** INT32 metadata value. */
export const i32 = (value: number): ScalarEntry => ({ type: GGUFValueType.INT32, value });
/** FLOAT32 metadata value. */
export const f32 = (value: number): ScalarEntry => ({ type: GGUFValueType.FLOAT32, value });
/** BOOL metadata value. */
export const bool = (value: boolean): ScalarEntry => ({ type: GGUFValueType.BOOL, value });
/** STRING metadata value. */
export const str = (value: string): ScalarEntry => ({ type: GGUFValueType.STRING, value });
/** UINT64 metadata value. */
export const u64 = (value: number | bigint): ScalarEntry => ({ type: GGUFValueType.UINT64, value });
/** INT64 metadata value. */
export const i64 = (value: number | bigint): ScalarEntry => ({ type: GGUFValueType.INT64, value });
/** FLOAT64 metadata value. */
export const f64 = (value: number): ScalarEntry => ({ type: GGUFValueType.FLOAT64, value });
/** ARRAY metadata value with elements of `elementType`. */
export const array = (
  elementType: ArrayEntry["elementType"],
  value: (number | bigint | string | boolean)[],
): ArrayEntry => ({ type: GGUFValueType.ARRAY, elementType, value });
/** Array of strings. */
export const strings = (value: string[]): ArrayEntry => array(GGUFValueType.STRING, value);
/** Array of FLOAT32. */
export const f32s = (value: number[] | Float32Array): ArrayEntry => array(GGUFValueType.FLOAT32, [...value]);
/** Array of INT32. */
export const i32s = (value: number[] | Int32Array): ArrayEntry => array(GGUFValueType.INT32, [...value]);
/** Array of UINT32. */
export const u32s = (value: number[] | Uint32Array): ArrayEntry => array(GGUFValueType.UINT32, [...value]);

/**
 * The metadata of an open file as writer entries (same keys, values and on-disk types), e.g. to rewrite
 * a model with other tensors. Nested arrays are not supported and throw a BadFlagError.
 */
export function metadataOf(file: GGUFFile): Record<string, MetadataEntry> {
  const out: Record<string, MetadataEntry> = {};
  for (const [key, value] of Object.entries(file.metadata)) {
    const t: MetadataType = file.metadataTypes[key];
    if (t.type === GGUFValueType.ARRAY) {
      if (t.elementType === undefined || t.elementType === GGUFValueType.ARRAY) {
        throw new BadFlagError(`metadata ${key}: nested arrays cannot be written`);
      }
      out[key] = array(t.elementType, value as (number | bigint | string | boolean)[]);
    } else {
      out[key] = { type: t.type, value: value as number | bigint | string | boolean };
    }
  }
  return out;
}

const INT_RANGES: Partial<Record<GGUFValueType, [number, number]>> = {
  [GGUFValueType.UINT8]: [0, 0xff],
  [GGUFValueType.INT8]: [-0x80, 0x7f],
  [GGUFValueType.UINT16]: [0, 0xffff],
  [GGUFValueType.INT16]: [-0x8000, 0x7fff],
  [GGUFValueType.UINT32]: [0, 0xffffffff],
  [GGUFValueType.INT32]: [-0x80000000, 0x7fffffff],
};

/** A growable little-endian byte buffer for the header. */
class HeaderBuilder {
  bytes = new Uint8Array(1 << 16);
  view = new DataView(this.bytes.buffer);
  length = 0;
  #encoder = new TextEncoder();

  #reserve(n: number): number {
    if (this.length + n > this.bytes.length) {
      const grown = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
      grown.set(this.bytes.subarray(0, this.length));
      this.bytes = grown;
      this.view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  u8(v: number): void {
    const at = this.#reserve(1);
    this.view.setUint8(at, v);
  }
  i8(v: number): void {
    const at = this.#reserve(1);
    this.view.setInt8(at, v);
  }
  u16(v: number): void {
    const at = this.#reserve(2);
    this.view.setUint16(at, v, true);
  }
  i16(v: number): void {
    const at = this.#reserve(2);
    this.view.setInt16(at, v, true);
  }
  u32(v: number): void {
    const at = this.#reserve(4);
    this.view.setUint32(at, v, true);
  }
  i32(v: number): void {
    const at = this.#reserve(4);
    this.view.setInt32(at, v, true);
  }
  f32(v: number): void {
    const at = this.#reserve(4);
    this.view.setFloat32(at, v, true);
  }
  f64(v: number): void {
    const at = this.#reserve(8);
    this.view.setFloat64(at, v, true);
  }
  u64(v: bigint): void {
    const at = this.#reserve(8);
    this.view.setBigUint64(at, v, true);
  }
  i64(v: bigint): void {
    const at = this.#reserve(8);
    this.view.setBigInt64(at, v, true);
  }
  string(s: string): void {
    const encoded = this.#encoder.encode(s);
    this.u64(BigInt(encoded.length));
    const at = this.#reserve(encoded.length); // may replace this.bytes: reserve before reading it
    this.bytes.set(encoded, at);
  }
  padTo(alignment: number): void {
    const padded = Math.ceil(this.length / alignment) * alignment;
    this.#reserve(padded - this.length); // fresh bytes are zero
  }
}

function writeScalar(out: HeaderBuilder, key: string, type: GGUFValueType, value: unknown): void {
  const bad = (what: string) => new BadFlagError(`metadata ${key}: ${what} (value ${String(value)})`);
  const range = INT_RANGES[type];
  if (range) {
    if (typeof value !== "number" || !Number.isInteger(value) || value < range[0] || value > range[1]) {
      throw bad(`not an integer in [${range[0]}, ${range[1]}] for ${GGUFValueType[type]}`);
    }
  }
  switch (type) {
    case GGUFValueType.UINT8:
      return out.u8(value as number);
    case GGUFValueType.INT8:
      return out.i8(value as number);
    case GGUFValueType.UINT16:
      return out.u16(value as number);
    case GGUFValueType.INT16:
      return out.i16(value as number);
    case GGUFValueType.UINT32:
      return out.u32(value as number);
    case GGUFValueType.INT32:
      return out.i32(value as number);
    case GGUFValueType.FLOAT32:
    case GGUFValueType.FLOAT64:
      if (typeof value !== "number") throw bad("not a number");
      return type === GGUFValueType.FLOAT32 ? out.f32(value) : out.f64(value);
    case GGUFValueType.BOOL:
      if (typeof value !== "boolean") throw bad("not a boolean");
      return out.u8(value ? 1 : 0);
    case GGUFValueType.STRING:
      if (typeof value !== "string") throw bad("not a string");
      return out.string(value);
    case GGUFValueType.UINT64:
    case GGUFValueType.INT64: {
      if (typeof value === "number" && !Number.isSafeInteger(value)) throw bad("not a safe integer");
      if (typeof value !== "number" && typeof value !== "bigint") throw bad("not an integer");
      const big = BigInt(value);
      const [lo, hi] = type === GGUFValueType.UINT64
        ? [0n, (1n << 64n) - 1n]
        : [-(1n << 63n), (1n << 63n) - 1n];
      if (big < lo || big > hi) throw bad(`out of range for ${GGUFValueType[type]}`);
      return type === GGUFValueType.UINT64 ? out.u64(big) : out.i64(big);
    }
    default:
      throw bad(`unknown value type ${type}`);
  }
}

interface PlannedTensor {
  entry: TensorEntry;
  byteLength: number;
  relativeOffset: number;
}

function planTensor(entry: TensorEntry): { byteLength: number } {
  const what = `tensor ${entry.name}`;
  const nameBytes = new TextEncoder().encode(entry.name).length;
  if (nameBytes === 0 || nameBytes > 63) throw new BadFlagError(`${what}: name must be 1 to 63 bytes`);
  const info = typeInfo(entry.type, what);
  const { shape } = entry;
  if (shape.length < 1 || shape.length > 4 || !shape.every((d) => Number.isSafeInteger(d) && d >= 1)) {
    throw new BadFlagError(
      `${what}: shape [${shape.join(", ")}] must have 1 to 4 positive integer dimensions`,
    );
  }
  if (shape[0] % info.blockSize !== 0) {
    throw new BadFlagError(
      `${what}: row length ${shape[0]} is not a multiple of the ${info.name} block size`,
    );
  }
  const nElements = shape.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(nElements)) throw new BadFlagError(`${what}: too many elements`);
  return { byteLength: tensorByteSize(entry.type, nElements, what) };
}

async function* chunksOf(entry: TensorEntry): AsyncIterable<Uint8Array> {
  const data = entry.data;
  if (data instanceof Uint8Array) {
    yield data;
    return;
  }
  const produced = await data();
  if (produced instanceof Uint8Array) yield produced;
  else yield* produced;
}

/** Writes all of `bytes`; a system error (a full disk, say) is a {@link BadFileError} naming `path`. */
async function writeAll(file: Deno.FsFile, bytes: Uint8Array, path: string): Promise<void> {
  let written = 0;
  try {
    while (written < bytes.length) written += await file.write(bytes.subarray(written));
  } catch (e) {
    throw new BadFileError(`${path}: write failed (${firstLine(e)})`, { cause: e });
  }
}

/**
 * Writes a GGUF v3 file at `path`: the header with every metadata entry and tensor info, then each tensor's
 * data (pulled in order, checked against its declared size) padded to the alignment. Invalid input throws
 * a {@link BadFlagError} naming the key or tensor, and a path that cannot be written a {@link BadFileError}
 * naming it; on any failure the temporary file is removed.
 */
export async function writeGGUF(path: string, options: WriteOptions): Promise<void> {
  const tensors = options.tensors ?? [];
  const metadata = options.metadata;
  let alignment = 32;
  const alignEntry = metadata["general.alignment"];
  if (alignEntry !== undefined) {
    const a = alignEntry.value;
    if (alignEntry.type !== GGUFValueType.UINT32 || typeof a !== "number" || a < 1 || (a & (a - 1)) !== 0) {
      throw new BadFlagError(`metadata general.alignment must be a UINT32 power of two`);
    }
    alignment = a;
  }

  const header = new HeaderBuilder();
  header.u32(0x46554747); // "GGUF"
  header.u32(3);
  header.u64(BigInt(tensors.length));
  header.u64(BigInt(Object.keys(metadata).length));
  for (const [key, entry] of Object.entries(metadata)) {
    header.string(key);
    header.u32(entry.type);
    if (entry.type === GGUFValueType.ARRAY) {
      if (!Array.isArray(entry.value)) throw new BadFlagError(`metadata ${key}: array value is not an array`);
      const elementType = entry.elementType;
      if (GGUFValueType[elementType] === undefined || (elementType as number) === GGUFValueType.ARRAY) {
        throw new BadFlagError(`metadata ${key}: invalid array element type ${elementType}`);
      }
      header.u32(elementType);
      header.u64(BigInt(entry.value.length));
      for (const element of entry.value) writeScalar(header, key, elementType, element);
    } else {
      writeScalar(header, key, entry.type, entry.value);
    }
  }

  const planned: PlannedTensor[] = [];
  const names = new Set<string>();
  let relativeOffset = 0;
  for (const entry of tensors) {
    if (names.has(entry.name)) throw new BadFlagError(`tensor ${entry.name}: duplicate name`);
    names.add(entry.name);
    const { byteLength } = planTensor(entry);
    planned.push({ entry, byteLength, relativeOffset });
    relativeOffset += Math.ceil(byteLength / alignment) * alignment;
  }
  for (const { entry, relativeOffset } of planned) {
    header.string(entry.name);
    header.u32(entry.shape.length);
    for (const d of entry.shape) header.u64(BigInt(d));
    header.u32(entry.type);
    header.u64(BigInt(relativeOffset));
  }
  header.padTo(alignment);

  const tmpPath = `${path}.tmp`;
  // The file is renamed over `path` at the end: a directory or a device there is refused before any writing.
  const existing = await Deno.stat(path).catch(() => undefined);
  if (existing !== undefined && !existing.isFile) {
    const what = existing.isDirectory ? "a directory" : "not a regular file";
    throw new BadFileError(`${path}: cannot write a GGUF file there (${what})`);
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(tmpPath, { write: true, create: true, truncate: true });
  } catch (e) {
    throw new BadFileError(`${path}: cannot write (${firstLine(e)})`, { cause: e });
  }
  let closed = false;
  try {
    await writeAll(file, header.bytes.subarray(0, header.length), tmpPath);
    const padding = new Uint8Array(alignment);
    for (const { entry, byteLength } of planned) {
      let written = 0;
      for await (const chunk of chunksOf(entry)) {
        if (written + chunk.length > byteLength) {
          throw new BadFlagError(`tensor ${entry.name}: data is longer than its ${byteLength} bytes`);
        }
        await writeAll(file, chunk, tmpPath);
        written += chunk.length;
      }
      if (written !== byteLength) {
        throw new BadFlagError(`tensor ${entry.name}: data has ${written} bytes, expected ${byteLength}`);
      }
      const pad = Math.ceil(byteLength / alignment) * alignment - byteLength;
      await writeAll(file, padding.subarray(0, pad), tmpPath);
    }
    file.close();
    closed = true;
    await Deno.rename(tmpPath, path).catch((e) => {
      throw new BadFileError(`${path}: cannot write (${firstLine(e)})`, { cause: e });
    });
  } catch (e) {
    if (!closed) file.close();
    await Deno.remove(tmpPath).catch(() => {});
    throw e;
  }
}
