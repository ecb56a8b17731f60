/**
 * The GGUF layer: the tensor type table, the validating reader, the writer and the CPU (de)quantisers.
 *
 * @module
 */

export {
  dequantize,
  GGMLType,
  type GGMLTypeInfo,
  quantize,
  tensorByteSize,
  TYPE_TABLE,
  typeInfo,
  typeName,
} from "./types.ts";
export {
  GGUFFile,
  GGUFValueType,
  type MetadataType,
  type MetadataValue,
  openGGUF,
  type TensorInfo,
} from "./reader.ts";
export { bf16ToF32, f32ToBf16, f32ToHalf, halfToF32 } from "./half.ts";
export {
  array,
  type ArrayEntry,
  bool,
  f32,
  f32s,
  f64,
  i16,
  i32,
  i32s,
  i64,
  i8,
  type MetadataEntry,
  metadataOf,
  type ScalarEntry,
  str,
  strings,
  type TensorData,
  type TensorEntry,
  u16,
  u32,
  u32s,
  u64,
  u8,
  writeGGUF,
  type WriteOptions,
} from "./writer.ts";
