/**
 * Reads PyTorch `torch.save` checkpoints directly: the file is a ZIP archive (`<archive>/data.pkl`, a
 * pickle of the state dict, plus one `<archive>/data/<key>` entry of raw little-endian bytes per storage).
 * Tensors are rebuilt from their storage, offset, shape and stride (any strides, gathered into row-major
 * order) and converted to float32; float32, bfloat16 and float16 storages are supported.
 *
 * @module
 */

import { BadFileError, firstLine, UnsupportedError } from "../errors.ts";
import { bf16ToF32, halfToF32 } from "../gguf/half.ts";
import { PyGlobal, PyTuple, unpickle } from "./pickle.ts";
import { ZipArchive } from "./zip.ts";

/** Element types of the checkpoint storages we read. */
export type TorchDType = "float32" | "bfloat16" | "float16";

/** One tensor of a checkpoint, converted to float32 in row-major order. */
export interface TorchTensor {
  /** Key in the state dict. */
  readonly name: string;
  /** Element type of the storage it came from. */
  readonly dtype: TorchDType;
  /** Dimensions, outermost first (PyTorch order). */
  readonly shape: readonly number[];
  /** Values in row-major order of `shape`. */
  readonly data: Float32Array;
}

const STORAGE_TYPES: Record<string, TorchDType> = {
  FloatStorage: "float32",
  BFloat16Storage: "bfloat16",
  HalfStorage: "float16",
};

const ELEMENT_BYTES: Record<TorchDType, number> = { float32: 4, bfloat16: 2, float16: 2 };

/** A storage reference from a persistent id; its bytes are read when a tensor uses it. */
class StorageRef {
  constructor(readonly dtype: TorchDType, readonly key: string, readonly numel: number) {}
}

/** A tensor as the pickle describes it, before its storage is read. */
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

function intTuple(value: unknown, what: string, where: string): number[] {
  if (!(value instanceof PyTuple)) throw new BadFileError(`${where}: ${what} is not a tuple`);
  return value.items.map((v) => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      throw new BadFileError(`${where}: ${what} holds ${String(v)}, expected a non-negative integer`);
    }
    return v;
  });
}

/**
 * Reads every tensor of the `torch.save` file at `path`. Throws a one-line {@link BadFileError} naming
 * the file for a damaged archive, an unsupported pickle opcode or global, a storage that is missing or
 * too short, or a value that is not a dict of tensors.
 */
export async function readTorchCheckpoint(path: string): Promise<Map<string, TorchTensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new BadFileError(`${path}: cannot read: ${firstLine(e)}`, { cause: e });
  }
  return parseTorchCheckpoint(bytes, path);
}

/** {@link readTorchCheckpoint} on bytes already in memory (`path` names them in errors). */
export async function parseTorchCheckpoint(
  bytes: Uint8Array,
  path: string,
): Promise<Map<string, TorchTensor>> {
  const zip = new ZipArchive(bytes, path);
  const pickles = zip.entries.filter((e) => e.name.endsWith("data.pkl") && e.name.split("/").length === 2);
  if (pickles.length !== 1) {
    throw new BadFileError(
      `${path}: not a torch.save archive (${pickles.length} top-level */data.pkl entries, expected 1)`,
    );
  }
  const prefix = pickles[0].name.slice(0, -"data.pkl".length);
  const order = zip.get(`${prefix}byteorder`);
  if (order) {
    const text = new TextDecoder().decode(await zip.extract(order)).trim();
    if (text !== "little") throw new UnsupportedError(`${path}: byte order "${text}" is not supported`);
  }
  const pkl = await zip.extract(pickles[0]);
  const where = `${path}: ${pickles[0].name}`;
  const root = unpickle(pkl, where, {
    persistentLoad(pid) {
      // ('storage', <StorageType global>, key, location, numel)
      if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== "storage") {
        throw new BadFileError(`${where}: persistent id is not a storage reference`);
      }
      const [, type, key, , numel] = pid.items;
      if (!(type instanceof PyGlobal) || type.module !== "torch") {
        throw new BadFileError(`${where}: storage type is not a torch storage class`);
      }
      const dtype = STORAGE_TYPES[type.name];
      if (!dtype) {
        throw new UnsupportedError(
          `${where}: storage type torch.${type.name} is not supported (${
            Object.keys(STORAGE_TYPES).join(", ")
          })`,
        );
      }
      if (typeof key !== "string" || typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
        throw new BadFileError(`${where}: storage reference has a bad key or element count`);
      }
      return new StorageRef(dtype, key, numel);
    },
    reduce(callable, args) {
      switch (callable.qualifiedName) {
        case "collections.OrderedDict":
          if (args.length !== 0) throw new BadFileError(`${where}: OrderedDict called with arguments`);
          return new Map();
        case "torch._utils._rebuild_tensor_v2": {
          // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
          const [storage, offset, size, stride] = args;
          if (!(storage instanceof StorageRef) || typeof offset !== "number" || args.length < 6) {
            throw new BadFileError(`${where}: malformed _rebuild_tensor_v2 arguments`);
          }
          const shape = intTuple(size, "tensor size", where);
          const strides = intTuple(stride, "tensor stride", where);
          if (shape.length !== strides.length) {
            throw new BadFileError(
              `${where}: tensor has ${shape.length} sizes but ${strides.length} strides`,
            );
          }
          if (!Number.isSafeInteger(offset) || offset < 0) {
            throw new BadFileError(`${where}: tensor storage offset ${offset} is invalid`);
          }
          return new TensorRef(storage, offset, shape, strides);
        }
        case "torch._utils._rebuild_parameter":
        case "torch._utils._rebuild_parameter_with_state": {
          const [tensor] = args;
          if (!(tensor instanceof TensorRef)) throw new BadFileError(`${where}: parameter without a tensor`);
          return tensor;
        }
        default:
          throw new BadFileError(`${where}: global ${callable.qualifiedName} is not allowed in a checkpoint`);
      }
    },
  });
  if (!(root instanceof Map)) throw new BadFileError(`${where}: top-level object is not a dict`);

  const storages = new Map<string, Uint8Array>();
  const out = new Map<string, TorchTensor>();
  for (const [name, value] of root) {
    if (typeof name !== "string") throw new BadFileError(`${where}: state dict key is not a string`);
    if (!(value instanceof TensorRef)) throw new BadFileError(`${path}: ${name} is not a tensor`);
    const { storage } = value;
    let raw = storages.get(storage.key);
    if (!raw) {
      const entry = zip.get(`${prefix}data/${storage.key}`);
      if (!entry) throw new BadFileError(`${path}: ${name}: storage entry data/${storage.key} is missing`);
      raw = await zip.extract(entry);
      storages.set(storage.key, raw);
    }
    out.set(name, materialise(name, value, raw, path));
  }
  return out;
}

function materialise(name: string, t: TensorRef, raw: Uint8Array, path: string): TorchTensor {
  const { dtype, numel } = t.storage;
  const size = ELEMENT_BYTES[dtype];
  if (raw.length < numel * size) {
    throw new BadFileError(`${path}: ${name}: storage holds ${raw.length} bytes, expected ${numel * size}`);
  }
  let count = 1;
  let last = t.offset; // highest element index the view touches
  for (let d = 0; d < t.shape.length; d++) {
    count *= t.shape[d];
    if (t.shape[d] > 0) last += (t.shape[d] - 1) * t.stride[d];
  }
  if (count > 0 && last >= numel) {
    throw new BadFileError(
      `${path}: ${name}: shape [${t.shape}] with strides [${t.stride}] at offset ${t.offset} reads past its ${numel}-element storage`,
    );
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const read = dtype === "float32"
    ? (i: number) => view.getFloat32(i * 4, true)
    : dtype === "bfloat16"
    ? (i: number) => bf16ToF32(view.getUint16(i * 2, true))
    : (i: number) => halfToF32(view.getUint16(i * 2, true));
  const data = new Float32Array(count);
  const rank = t.shape.length;
  const index = new Array<number>(rank).fill(0);
  let src = t.offset;
  for (let n = 0; n < count; n++) {
    data[n] = read(src);
    // Advance the multi-index in row-major order, keeping `src` in step with the strides.
    for (let d = rank - 1; d >= 0; d--) {
      index[d]++;
      src += t.stride[d];
      if (index[d] < t.shape[d]) break;
      src -= t.stride[d] * t.shape[d];
      index[d] = 0;
    }
  }
  return { name, dtype, shape: [...t.shape], data };
}
