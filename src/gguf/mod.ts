/**
 * The GGUF layer: the tensor type table, the validating reader, the writer and the CPU (de)quantisers.
 *
 * @module
 */

export {
  dequantize,
  GGMLType,
  type GGMLTypeInfo,
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
