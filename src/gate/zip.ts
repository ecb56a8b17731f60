/**
 * A minimal ZIP reader for `torch.save` archives: parses the central directory (with ZIP64 sizes and
 * offsets), locates each entry's data through its local header, inflates deflated entries with
 * `DecompressionStream("deflate-raw")` and checks every entry's CRC-32. Encryption, multi-disk archives
 * and methods other than stored (0) and deflate (8) are rejected with a {@link BadFileError}.
 *
 * @module
 */

import { BadFileError, firstLine } from "../errors.ts";

/** One member of a ZIP archive. */
export interface ZipEntry {
  /** Path inside the archive. */
  readonly name: string;
  /** Compression method: 0 stored, 8 deflate. */
  readonly method: number;
  /** CRC-32 of the uncompressed bytes. */
  readonly crc32: number;
  /** Bytes in the archive. */
  readonly compressedSize: number;
  /** Bytes once extracted. */
  readonly size: number;
  /** Offset of the entry's local header in the archive. */
  readonly localHeaderOffset: number;
}

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the ZIP/PNG polynomial) of `bytes`. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A ZIP archive held in memory: its entries by name and a way to extract them. */
export class ZipArchive {
  /** Every entry, in central-directory order. */
  readonly entries: readonly ZipEntry[];
  #byName: Map<string, ZipEntry>;

  /** Parses the central directory of `bytes`; `path` names the archive in errors. */
  constructor(readonly bytes: Uint8Array, readonly path: string) {
    this.entries = readCentralDirectory(bytes, path);
    this.#byName = new Map(this.entries.map((e) => [e.name, e]));
  }

  /** The entry called `name`, or undefined. */
  get(name: string): ZipEntry | undefined {
    return this.#byName.get(name);
  }

  /** The uncompressed bytes of `entry`, CRC-checked; BadFileError naming the archive and entry otherwise. */
  async extract(entry: ZipEntry): Promise<Uint8Array> {
    const { bytes, path } = this;
    const where = `${path}: zip entry ${entry.name}`;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const at = entry.localHeaderOffset;
    if (at + 30 > bytes.length || view.getUint32(at, true) !== LOCAL_SIGNATURE) {
      throw new BadFileError(`${where}: local header at byte ${at} is missing or damaged`);
    }
    const start = at + 30 + view.getUint16(at + 26, true) + view.getUint16(at + 28, true);
    const end = start + entry.compressedSize;
    if (end > bytes.length) {
      throw new BadFileError(
        `${where}: data ends at byte ${end}, past the end of the ${bytes.length}-byte file`,
      );
    }
    const raw = bytes.subarray(start, end);
    let data: Uint8Array;
    if (entry.method === 0) {
      if (entry.size !== entry.compressedSize) throw new BadFileError(`${where}: stored entry sizes differ`);
      data = raw;
    } else if (entry.method === 8) {
      data = await inflateRaw(raw, where);
    } else {
      throw new BadFileError(
        `${where}: compression method ${entry.method} is not supported (stored or deflate)`,
      );
    }
    if (data.length !== entry.size) {
      throw new BadFileError(`${where}: extracted ${data.length} bytes, the directory says ${entry.size}`);
    }
    if (crc32(data) !== entry.crc32) throw new BadFileError(`${where}: CRC-32 mismatch (corrupt data)`);
    return data;
  }
}

async function inflateRaw(raw: Uint8Array, where: string): Promise<Uint8Array> {
  try {
    const stream = new Blob([raw as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
      new DecompressionStream("deflate-raw"),
    );
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new BadFileError(`${where}: deflate data is corrupt (${firstLine(e)})`);
  }
}

function readCentralDirectory(bytes: Uint8Array, path: string): ZipEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const notZip = (why: string) => new BadFileError(`${path}: not a readable zip archive (${why})`);
  if (bytes.length < 22) throw notZip(`only ${bytes.length} bytes`);
  let eocd = -1;
  const lowest = Math.max(0, bytes.length - 22 - 0xffff);
  for (let i = bytes.length - 22; i >= lowest; i--) {
    if (view.getUint32(i, true) === EOCD_SIGNATURE) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw notZip("no end-of-central-directory record; truncated?");
  if (view.getUint16(eocd + 4, true) !== 0 || view.getUint16(eocd + 6, true) !== 0) {
    throw notZip("multi-disk archive");
  }
  let count = view.getUint16(eocd + 10, true);
  let dirSize = view.getUint32(eocd + 12, true);
  let dirOffset = view.getUint32(eocd + 16, true);
  const locator = eocd - 20;
  if (locator >= 0 && view.getUint32(locator, true) === ZIP64_LOCATOR_SIGNATURE) {
    const z = safeU64(view, locator + 8, path, "zip64 locator");
    if (z + 56 > bytes.length || view.getUint32(z, true) !== ZIP64_EOCD_SIGNATURE) {
      throw notZip("damaged zip64 end-of-central-directory record");
    }
    count = safeU64(view, z + 32, path, "zip64 entry count");
    dirSize = safeU64(view, z + 40, path, "zip64 directory size");
    dirOffset = safeU64(view, z + 48, path, "zip64 directory offset");
  }
  if (dirOffset + dirSize > bytes.length) {
    throw notZip(`central directory ends at byte ${dirOffset + dirSize}, past the end; truncated?`);
  }
  // Every central-directory record takes at least 46 bytes, so the count cannot exceed this.
  if (count * 46 > dirSize) throw notZip(`${count} entries cannot fit a ${dirSize}-byte directory`);
  const entries: ZipEntry[] = [];
  const decoder = new TextDecoder("utf-8", { fatal: false });
  let p = dirOffset;
  for (let n = 0; n < count; n++) {
    if (p + 46 > dirOffset + dirSize || view.getUint32(p, true) !== CENTRAL_SIGNATURE) {
      throw notZip(`central directory record ${n} is damaged`);
    }
    const flags = view.getUint16(p + 8, true);
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    let compressedSize = view.getUint32(p + 20, true);
    let size = view.getUint32(p + 24, true);
    const nameLength = view.getUint16(p + 28, true);
    const extraLength = view.getUint16(p + 30, true);
    const commentLength = view.getUint16(p + 32, true);
    let localHeaderOffset = view.getUint32(p + 42, true);
    const next = p + 46 + nameLength + extraLength + commentLength;
    if (next > dirOffset + dirSize) throw notZip(`central directory record ${n} overruns the directory`);
    const name = decoder.decode(bytes.subarray(p + 46, p + 46 + nameLength));
    if (flags & 1) throw new BadFileError(`${path}: zip entry ${name} is encrypted`);
    // ZIP64 extended information: the fields saturated at 0xffffffff follow in a fixed order.
    let e = p + 46 + nameLength;
    const extraEnd = e + extraLength;
    while (e + 4 <= extraEnd) {
      const id = view.getUint16(e, true);
      const len = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let f = e + 4;
        const take = () => {
          if (f + 8 > e + 4 + len) throw notZip(`zip64 field of ${name} is short`);
          const v = safeU64(view, f, path, `zip64 field of ${name}`);
          f += 8;
          return v;
        };
        if (size === 0xffffffff) size = take();
        if (compressedSize === 0xffffffff) compressedSize = take();
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = take();
      }
      e += 4 + len;
    }
    if (localHeaderOffset + 30 > bytes.length) {
      throw notZip(`entry ${name} starts at byte ${localHeaderOffset}, past the end; truncated?`);
    }
    entries.push({ name, method, crc32: crc, compressedSize, size, localHeaderOffset });
    p = next;
  }
  return entries;
}

function safeU64(view: DataView, at: number, path: string, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new BadFileError(`${path}: ${what} ${v} is too large`);
  return Number(v);
}
