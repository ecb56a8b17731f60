/**
 * Opens a GGUF file: parses the header, metadata and tensor infos with `@huggingface/gguf` (fed by a
 * local-file range reader, so only the header is read), then checks every field against the file itself
 * before anything is sized from it. Tensor data is read on demand, range by range; the whole file is never
 * held in memory.
 *
 * @module
 */

import { gguf } from "@huggingface/gguf";
import { BadFileError, UnsupportedError, WgkvError } from "../errors.ts";
import { tensorByteSize, typeInfo, typeName } from "./types.ts";
import type { GGMLType } from "./types.ts";

/** A metadata value as wgkv exposes it: integers that fit a double become numbers, arrays are JS arrays. */
export type MetadataValue = number | bigint | string | boolean | MetadataValue[];

/** One tensor of a GGUF file, validated against the file. */
export interface TensorInfo {
  /** Tensor name, e.g. "blk.0.attn_q.weight". */
  name: string;
  /** Element type (always one of the supported {@link GGMLType}s). */
  type: GGMLType;
  /** Dimensions in ggml order: shape[0] is the row length (contiguous in memory). */
  shape: number[];
  /** Product of the dimensions. */
  nElements: number;
  /** Bytes of tensor data in the file. */
  byteLength: number;
  /** Absolute file offset of the first data byte. */
  offset: number;
}

/** GGUF metadata value types, with the numbering of the file format. */
export enum GGUFValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** The on-disk type of a metadata value (for arrays, also the element type). */
export interface MetadataType {
  /** Value type. */
  type: GGUFValueType;
  /** Element type when `type` is ARRAY. */
  elementType?: GGUFValueType;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const MAX_DIMS = 4; // GGML_MAX_DIMS
const MAX_ALIGNMENT = 1 << 20;
const MIN_KV_BYTES = 8 + 4 + 1; // empty key, value type, one-byte value
const MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8; // empty name, n_dims, type, offset

/** Serialises async reads of one file handle (seek + read must not interleave). */
class FileReader {
  #file: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(file: Deno.FsFile, readonly path: string, readonly size: number) {
    this.#file = file;
  }

  /** Reads `length` bytes at `position`; `position + length` must not pass the end of the file. */
  read(position: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
    const run = this.#queue.then(() => this.#readNow(position, length));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #readNow(position: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
    const out = new Uint8Array(length);
    try {
      await this.#file.seek(position, Deno.SeekMode.Start);
      let filled = 0;
      while (filled < length) {
        const n = await this.#file.read(out.subarray(filled));
        if (n === null) break;
        filled += n;
      }
      if (filled < length) {
        throw new BadFileError(
          `${this.path}: file ended at byte ${position + filled}, expected ${position + length}`,
        );
      }
    } catch (e) {
      if (e instanceof WgkvError) throw e;
      throw new BadFileError(`${this.path}: read failed at byte ${position}: ${oneLine(e)}`, { cause: e });
    }
    return out;
  }

  close(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }
}

function oneLine(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/\s*\n\s*/g, " ").trim();
}

/** A `fetch` that answers HTTP Range requests from a local file, as `@huggingface/gguf` expects. */
function rangeFetch(reader: FileReader): typeof fetch {
  return async (_input, init) => {
    const range = new Headers(init?.headers).get("range") ?? "";
    const match = /^bytes=(\d+)-(\d+)$/.exec(range);
    if (!match) throw new Error(`unexpected range request "${range}"`);
    const start = Number(match[1]);
    const end = Math.min(Number(match[2]), reader.size - 1);
    if (start >= reader.size || end < start) {
      return new Response(new Uint8Array(0), {
        status: 416,
        headers: { "Content-Range": `bytes */${reader.size}` },
      });
    }
    const bytes = await reader.read(start, end - start + 1);
    return new Response(bytes, {
      status: 206,
      headers: { "Content-Range": `bytes ${start}-${end}/${reader.size}` },
    });
  };
}

function toExposed(value: unknown): MetadataValue {
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(value)
      : value;
  }
  if (Array.isArray(value)) return value.map(toExposed);
  return value as MetadataValue;
}

function describe(value: MetadataValue | undefined): string {
  if (value === undefined) return "missing";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

/** An open GGUF file: metadata and tensor infos in memory, tensor data read on demand. */
export class GGUFFile {
  /** Path the file was opened from. */
  readonly path: string;
  /** GGUF format version (2 or 3). */
  readonly version: number;
  /** File size in bytes. */
  readonly fileSize: number;
  /** Alignment of tensor data (general.alignment, default 32). */
  readonly alignment: number;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number;
  /** Every metadata key/value pair. */
  readonly metadata: Record<string, MetadataValue>;
  /** The on-disk type of every metadata value. */
  readonly metadataTypes: Record<string, MetadataType>;
  /** Tensor infos in file order. */
  readonly tensors: TensorInfo[];
  #byName: Map<string, TensorInfo>;
  #reader: FileReader;

  /** Use {@link openGGUF}. */
  constructor(
    reader: FileReader,
    fields: {
      version: number;
      alignment: number;
      dataOffset: number;
      metadata: Record<string, MetadataValue>;
      metadataTypes: Record<string, MetadataType>;
      tensors: TensorInfo[];
    },
  ) {
    this.#reader = reader;
    this.path = reader.path;
    this.fileSize = reader.size;
    this.version = fields.version;
    this.alignment = fields.alignment;
    this.dataOffset = fields.dataOffset;
    this.metadata = fields.metadata;
    this.metadataTypes = fields.metadataTypes;
    this.tensors = fields.tensors;
    this.#byName = new Map(fields.tensors.map((t) => [t.name, t]));
  }

  /** `general.architecture` (e.g. "llama"); BadFileError when absent or not a string. */
  get architecture(): string {
    return this.getString("general.architecture");
  }

  /** Whether a tensor called `name` exists. */
  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** The tensor called `name`; BadFileError naming the file and the tensor when it does not exist. */
  tensor(name: string): TensorInfo {
    const info = this.#byName.get(name);
    if (!info) throw new BadFileError(`${this.path}: tensor ${name} is missing`);
    return info;
  }

  /** Whether metadata key `key` exists. */
  hasMeta(key: string): boolean {
    return Object.hasOwn(this.metadata, key);
  }

  #get(key: string): MetadataValue | undefined {
    return Object.hasOwn(this.metadata, key) ? this.metadata[key] : undefined;
  }

  /** Numeric metadata `key` (or `fallback` when absent); BadFileError when missing or not a number. */
  getNumber(key: string, fallback?: number): number {
    const value = this.#get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value === "number") return value;
    throw new BadFileError(`${this.path}: metadata ${key} is ${describe(value)}, expected a number`);
  }

  /** String metadata `key` (or `fallback` when absent); BadFileError when missing or not a string. */
  getString(key: string, fallback?: string): string {
    const value = this.#get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value === "string") return value;
    throw new BadFileError(`${this.path}: metadata ${key} is ${describe(value)}, expected a string`);
  }

  /** Boolean metadata `key` (or `fallback` when absent); BadFileError when missing or not a boolean. */
  getBoolean(key: string, fallback?: boolean): boolean {
    const value = this.#get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (typeof value === "boolean") return value;
    throw new BadFileError(`${this.path}: metadata ${key} is ${describe(value)}, expected a boolean`);
  }

  /** Array metadata `key` (or `fallback` when absent); BadFileError when missing or not an array. */
  getArray(key: string, fallback?: MetadataValue[]): MetadataValue[] {
    const value = this.#get(key);
    if (value === undefined && fallback !== undefined) return fallback;
    if (Array.isArray(value)) return value;
    throw new BadFileError(`${this.path}: metadata ${key} is ${describe(value)}, expected an array`);
  }

  /**
   * Reads `byteLength` bytes of tensor `info`'s data starting `byteStart` bytes into it (default: all of
   * it). Only that range is read from disk.
   */
  readBytes(
    info: TensorInfo,
    byteStart = 0,
    byteLength: number = info.byteLength - byteStart,
  ): Promise<Uint8Array> {
    if (
      !Number.isSafeInteger(byteStart) || !Number.isSafeInteger(byteLength) || byteStart < 0 ||
      byteLength < 0 ||
      byteStart + byteLength > info.byteLength
    ) {
      return Promise.reject(
        new BadFileError(
          `${this.path}: tensor ${info.name}: byte range ${byteStart}+${byteLength} is outside its ${info.byteLength} bytes`,
        ),
      );
    }
    return this.#reader.read(info.offset + byteStart, byteLength);
  }

  /** Reads tensor `info` and dequantises it to float32 (exactly as ggml does). */
  async readF32(info: TensorInfo): Promise<Float32Array> {
    const bytes = await this.readBytes(info);
    const out = new Float32Array(info.nElements);
    typeInfo(info.type, `${this.path}: tensor ${info.name}`).dequantize(bytes, out);
    return out;
  }

  /** Closes the file; later reads fail. */
  close(): void {
    this.#reader.close();
  }
}

/** Reads and checks the fixed header ourselves, before the parser sizes anything from it. */
async function checkHeader(reader: FileReader): Promise<number> {
  const { path, size } = reader;
  if (size < 24) throw new BadFileError(`${path}: not a GGUF file (only ${size} bytes)`);
  const head = new DataView((await reader.read(0, 24)).buffer);
  if (head.getUint32(0, true) !== MAGIC) throw new BadFileError(`${path}: not a GGUF file (bad magic)`);
  const version = head.getUint32(4, true);
  if (version !== 2 && version !== 3) {
    throw new UnsupportedError(`${path}: GGUF version ${version} is not supported (2 or 3, little-endian)`);
  }
  const tensorCount = head.getBigUint64(8, true);
  const kvCount = head.getBigUint64(16, true);
  const minimum = 24n + tensorCount * BigInt(MIN_TENSOR_INFO_BYTES) + kvCount * BigInt(MIN_KV_BYTES);
  if (minimum > BigInt(size)) {
    throw new BadFileError(
      `${path}: header declares ${tensorCount} tensors and ${kvCount} metadata keys, more than a ${size}-byte file holds`,
    );
  }
  return version;
}

/**
 * Opens and validates the GGUF file at `path`. Throws a {@link BadFileError} (or {@link UnsupportedError}
 * for a valid file wgkv cannot handle) with a one-line message naming the file and the offending field.
 */
export async function openGGUF(path: string): Promise<GGUFFile> {
  let file: Deno.FsFile;
  let size: number;
  if (path === "") throw new BadFileError(`"": no GGUF file named (the path is empty)`);
  // Checked before opening too: opening a FIFO for reading waits for a writer, and a device never ends.
  const kind = await Deno.stat(path).catch(() => undefined);
  if (kind !== undefined && !kind.isFile) {
    throw new BadFileError(`${path}: not a regular file${kind.isDirectory ? " (a directory)" : ""}`);
  }
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new BadFileError(`${path}: cannot open: ${oneLine(e)}`, { cause: e });
  }
  try {
    const stat = await file.stat();
    if (!stat.isFile) throw new BadFileError(`${path}: not a regular file`);
    size = stat.size;
  } catch (e) {
    file.close();
    if (e instanceof WgkvError) throw e;
    throw new BadFileError(`${path}: cannot stat: ${oneLine(e)}`, { cause: e });
  }
  const reader = new FileReader(file, path, size);
  try {
    return await parse(reader);
  } catch (e) {
    reader.close();
    if (e instanceof WgkvError) throw e;
    throw new BadFileError(`${path}: not a valid GGUF file: ${oneLine(e)}`, { cause: e });
  }
}

async function parse(reader: FileReader): Promise<GGUFFile> {
  const { path, size } = reader;
  const version = await checkHeader(reader);
  let parsed;
  try {
    parsed = await gguf(`http://wgkv.local/${encodeURIComponent(path)}`, {
      fetch: rangeFetch(reader),
      typedMetadata: true,
    });
  } catch (e) {
    if (e instanceof WgkvError) throw e;
    throw new BadFileError(`${path}: not a valid GGUF file: ${oneLine(e)}`, { cause: e });
  }
  const [, headerEnd] = parsed.tensorInfoByteRange;
  if (headerEnd > size) {
    throw new BadFileError(
      `${path}: truncated: header and tensor infos need ${headerEnd} bytes, file has ${size}`,
    );
  }

  const metadata: Record<string, MetadataValue> = Object.create(null);
  const metadataTypes: Record<string, MetadataType> = Object.create(null);
  let keyCount = 0;
  for (const [key, typed] of Object.entries(parsed.typedMetadata)) {
    if (key === "version" || key === "tensor_count" || key === "kv_count") continue;
    keyCount++;
    metadata[key] = toExposed(typed.value);
    const type: MetadataType = { type: typed.type as number as GGUFValueType };
    if ("subType" in typed && typed.subType !== undefined) type.elementType = typed.subType as number;
    metadataTypes[key] = type;
  }
  if (BigInt(keyCount) !== BigInt(parsed.metadata.kv_count)) {
    throw new BadFileError(
      `${path}: ${parsed.metadata.kv_count} metadata keys declared but ${keyCount} distinct usable keys found (duplicate or reserved key)`,
    );
  }

  let alignment = 32;
  if (Object.hasOwn(metadata, "general.alignment")) {
    const raw = metadata["general.alignment"];
    if (
      typeof raw !== "number" || !Number.isInteger(raw) || raw <= 0 || raw > MAX_ALIGNMENT ||
      (raw & (raw - 1)) !== 0
    ) {
      throw new BadFileError(
        `${path}: general.alignment ${String(raw)} is not a power of two up to ${MAX_ALIGNMENT}`,
      );
    }
    alignment = raw;
  }
  const dataOffset = Math.ceil(headerEnd / alignment) * alignment;

  const tensors: TensorInfo[] = [];
  const seen = new Set<string>();
  for (const raw of parsed.tensorInfos) {
    const what = `${path}: tensor ${raw.name}`;
    if (seen.has(raw.name)) throw new BadFileError(`${path}: duplicate tensor name ${raw.name}`);
    seen.add(raw.name);
    const info = typeInfo(raw.dtype, what);
    if (raw.shape.length < 1 || raw.shape.length > MAX_DIMS) {
      throw new BadFileError(`${what}: ${raw.shape.length} dimensions (1 to ${MAX_DIMS} allowed)`);
    }
    let product = 1n;
    for (const dim of raw.shape) {
      if (dim < 1n) {
        throw new BadFileError(`${what}: dimension of size ${dim} in shape [${raw.shape.join(", ")}]`);
      }
      product *= dim;
    }
    if (product > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new BadFileError(`${what}: shape [${raw.shape.join(", ")}] has too many elements`);
    }
    const shape = raw.shape.map(Number);
    const nElements = Number(product);
    if (shape[0] % info.blockSize !== 0) {
      throw new BadFileError(
        `${what}: row length ${shape[0]} is not a multiple of the ${
          typeName(raw.dtype)
        } block size ${info.blockSize}`,
      );
    }
    const byteLength = tensorByteSize(raw.dtype, nElements, what);
    if (raw.offset % BigInt(alignment) !== 0n) {
      throw new BadFileError(
        `${what}: data offset ${raw.offset} is not a multiple of the alignment ${alignment}`,
      );
    }
    const end = BigInt(dataOffset) + raw.offset + BigInt(byteLength);
    if (end > BigInt(size)) {
      throw new BadFileError(
        `${what}: data (${byteLength} bytes at ${
          BigInt(dataOffset) + raw.offset
        }) runs past the end of the ${size}-byte file`,
      );
    }
    tensors.push({
      name: raw.name,
      type: raw.dtype as number,
      shape,
      nElements,
      byteLength,
      offset: dataOffset + Number(raw.offset),
    });
  }
  return new GGUFFile(reader, { version, alignment, dataOffset, metadata, metadataTypes, tensors });
}
