/**
 * The GGUF tensor type table: one entry per supported ggml type, giving its block geometry and its CPU
 * dequantiser (and quantiser where we have one). The loader, the GPU kernels' specialisation and the tests
 * all go through {@link typeInfo}; adding a type means adding one entry here.
 *
 * @module
 */

import { BadFileError, UnsupportedError } from "../errors.ts";
import { bf16ToF32, HALF_TO_F32 } from "./half.ts";
import {
  dequantizeQ4_0,
  dequantizeQ4_1,
  dequantizeQ5_0,
  dequantizeQ5_1,
  dequantizeQ8_0,
} from "./quant_legacy.ts";
import { dequantizeQ2_K, dequantizeQ3_K, dequantizeQ4_K, dequantizeQ5_K, dequantizeQ6_K } from "./quant_k.ts";
import { QUANTIZERS } from "./quantize.ts";

/** ggml tensor types wgkv can load, with ggml's numbering (the `type` field of a GGUF tensor info). */
export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
}

/** Everything wgkv knows about one tensor type. */
export interface GGMLTypeInfo {
  /** The ggml type number. */
  readonly type: GGMLType;
  /** ggml's name of the type, e.g. "Q4_K". */
  readonly name: string;
  /** Elements per block (1 for F32/F16/BF16, 32 for legacy quants, 256 for K quants). */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly bytesPerBlock: number;
  /** Decodes whole blocks `src` into `dst` (dst.length elements, a multiple of blockSize), as ggml does. */
  readonly dequantize: (src: Uint8Array, dst: Float32Array) => void;
  /** Encodes `src` (length a multiple of blockSize) into blocks; absent where wgkv has no quantiser. */
  readonly quantize?: (src: Float32Array) => Uint8Array;
}

function dequantizeF32(src: Uint8Array, dst: Float32Array): void {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < dst.length; i++) dst[i] = view.getFloat32(4 * i, true);
}

function dequantizeF16(src: Uint8Array, dst: Float32Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = HALF_TO_F32[src[2 * i] | (src[2 * i + 1] << 8)];
}

function dequantizeBF16(src: Uint8Array, dst: Float32Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = bf16ToF32(src[2 * i] | (src[2 * i + 1] << 8));
}

function entry(
  type: GGMLType,
  blockSize: number,
  bytesPerBlock: number,
  dequantize: (src: Uint8Array, dst: Float32Array) => void,
): GGMLTypeInfo {
  const quantize = QUANTIZERS[GGMLType[type]];
  return Object.freeze({ type, name: GGMLType[type], blockSize, bytesPerBlock, dequantize, quantize });
}

/** The type table, indexed by ggml type number. */
export const TYPE_TABLE: ReadonlyMap<number, GGMLTypeInfo> = new Map(
  [
    entry(GGMLType.F32, 1, 4, dequantizeF32),
    entry(GGMLType.F16, 1, 2, dequantizeF16),
    entry(GGMLType.Q4_0, 32, 18, dequantizeQ4_0),
    entry(GGMLType.Q4_1, 32, 20, dequantizeQ4_1),
    entry(GGMLType.Q5_0, 32, 22, dequantizeQ5_0),
    entry(GGMLType.Q5_1, 32, 24, dequantizeQ5_1),
    entry(GGMLType.Q8_0, 32, 34, dequantizeQ8_0),
    entry(GGMLType.Q2_K, 256, 84, dequantizeQ2_K),
    entry(GGMLType.Q3_K, 256, 110, dequantizeQ3_K),
    entry(GGMLType.Q4_K, 256, 144, dequantizeQ4_K),
    entry(GGMLType.Q5_K, 256, 176, dequantizeQ5_K),
    entry(GGMLType.Q6_K, 256, 210, dequantizeQ6_K),
    entry(GGMLType.BF16, 1, 2, dequantizeBF16),
  ].map((info) => [info.type, info]),
);

/** ggml names of types wgkv does not support, for readable errors (ggml numbering). */
const UNSUPPORTED_NAMES: Record<number, string> = {
  4: "Q4_2",
  5: "Q4_3",
  9: "Q8_1",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
};

/** Human name of any ggml type number ("Q4_K", "IQ2_XS", or "unknown type 99"). */
export function typeName(type: number): string {
  return TYPE_TABLE.get(type)?.name ?? UNSUPPORTED_NAMES[type] ?? `unknown type ${type}`;
}

/**
 * The table entry of ggml type `type`. `what` names the thing being loaded (e.g. "tensor blk.0.attn_q.weight")
 * and starts the {@link UnsupportedError} thrown for a type wgkv cannot handle.
 */
export function typeInfo(type: number, what: string): GGMLTypeInfo {
  const info = TYPE_TABLE.get(type);
  if (info) return info;
  const supported = [...TYPE_TABLE.values()].map((t) => t.name).join(", ");
  const name = UNSUPPORTED_NAMES[type];
  const described = name ? `${name} (${type})` : `${type} (unknown)`;
  throw new UnsupportedError(`${what}: type ${described} is not supported (supported: ${supported})`);
}

/**
 * Bytes taken by `nElements` elements of type `type`. Throws a BadFileError (UnsupportedError for an
 * unknown type) when the count is not a non-negative safe integer multiple of the type's block size.
 */
export function tensorByteSize(type: number, nElements: number, what = "tensor"): number {
  const info = typeInfo(type, what);
  if (!Number.isSafeInteger(nElements) || nElements < 0) {
    throw new BadFileError(`${what}: element count ${nElements} is not a non-negative safe integer`);
  }
  if (nElements % info.blockSize !== 0) {
    throw new BadFileError(
      `${what}: ${nElements} elements is not a multiple of the ${info.name} block size ${info.blockSize}`,
    );
  }
  return (nElements / info.blockSize) * info.bytesPerBlock;
}

/** Dequantises `nElements` elements of type `type` stored in `src` into a new Float32Array. */
export function dequantize(type: number, src: Uint8Array, nElements: number, what = "tensor"): Float32Array {
  const info = typeInfo(type, what);
  const needed = tensorByteSize(type, nElements, what);
  if (src.byteLength < needed) {
    throw new BadFileError(`${what}: ${info.name} data has ${src.byteLength} bytes, ${needed} needed`);
  }
  const dst = new Float32Array(nElements);
  info.dequantize(src, dst);
  return dst;
}

/** Quantises `src` (length a multiple of the block size) to raw blocks of type `type`; UnsupportedError without a quantiser. */
export function quantize(type: number, src: Float32Array, what = "tensor"): Uint8Array {
  const info = typeInfo(type, what);
  if (!info.quantize) throw new UnsupportedError(`${what}: wgkv has no ${info.name} quantiser`);
  tensorByteSize(type, src.length, what);
  return info.quantize(src);
}
