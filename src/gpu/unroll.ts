/**
 * Loop unrolling for WGSL sources. A `for` loop over a small constant range that indexes a function-local
 * array (a register block) must be unrolled for the array to live in registers: through naga and Vulkan
 * the GPU driver may otherwise keep it in slow local memory, which costs an order of magnitude or more.
 * Kernels mark such loops with a `// @unroll` comment on the line before:
 *
 * ```wgsl
 * // @unroll
 * for (var i = 0u; i < 4u; i++) { acc[i] += x[i]; }
 * ```
 *
 * The loop must count from `0u` with `<` and `++`, and its bound must be an integer literal or a `const`
 * of the source (e.g. one spliced in by the host). Each copy of the body is its own block with the loop
 * variable replaced by the literal (`acc[0u]`, `acc[1u]`, …), so indices become constants.
 *
 * `// @unroll if NAME` unrolls only when the `const` NAME (a `bool`, or an integer) is true or nonzero,
 * and otherwise leaves the loop as written: a tuning knob, since overrides given a value become consts
 * (see {@link specialiseOverrides}).
 *
 * @module
 */

import { UnsupportedError } from "../errors.ts";

const MARKER =
  /^[ \t]*\/\/ @unroll(?: if (\w+))?[ \t]*\n[ \t]*for \(var (\w+) = 0u; \2 < (\w+); \2\+\+\) \{/m;

/** Value of an integer literal (`8`, `8u`) or of a `const NAME ... = 8u;` declared in `code`. */
function boundValue(code: string, bound: string): number {
  const literal = /^(\d+)u?$/.exec(bound);
  if (literal) return Number(literal[1]);
  const declared = new RegExp(`const ${bound}\\s*(?::\\s*\\w+)?\\s*=\\s*(\\d+)u?\\s*;`).exec(code);
  if (!declared) throw new UnsupportedError(`@unroll: the bound ${bound} is not an integer constant`);
  return Number(declared[1]);
}

/** Whether the `const NAME ... = true;` (or a nonzero integer) declared in `code` holds. */
function conditionHolds(code: string, name: string): boolean {
  const declared = new RegExp(`const ${name}\\s*(?::\\s*\\w+)?\\s*=\\s*(true|false|\\d+)[ui]?\\s*;`).exec(
    code,
  );
  if (!declared) {
    throw new UnsupportedError(`@unroll: the condition ${name} is not a bool or integer constant`);
  }
  return declared[1] === "true" || (declared[1] !== "false" && Number(declared[1]) !== 0);
}

/** Index just past the `}` that closes the `{` at `open`. */
function closingBrace(code: string, open: number): number {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    if (code[i] === "{") depth++;
    else if (code[i] === "}" && --depth === 0) return i + 1;
  }
  throw new UnsupportedError("@unroll: unbalanced braces");
}

/**
 * `code` with every `// @unroll` loop expanded (outer loops first, then the loops inside the copies), and
 * the markers of `// @unroll if NAME` loops whose condition is false removed.
 */
export function unrollLoops(code: string): string {
  for (let match = MARKER.exec(code); match; match = MARKER.exec(code)) {
    const [whole, condition, variable, bound] = match;
    if (condition !== undefined && !conditionHolds(code, condition)) {
      // Keep the loop; drop only the marker line.
      code = code.slice(0, match.index) + code.slice(code.indexOf("\n", match.index) + 1);
      continue;
    }
    const open = match.index + whole.length - 1;
    const end = closingBrace(code, open);
    const body = code.slice(open + 1, end - 1);
    const count = boundValue(code, bound);
    const name = new RegExp(`\\b${variable}\\b`, "g");
    const copies = Array.from({ length: count }, (_, k) => `{${body.replace(name, `${k}u`)}}`);
    code = code.slice(0, match.index) + copies.join("\n") + code.slice(end);
  }
  const stray = code.indexOf("// @unroll");
  if (stray >= 0) {
    const line = code.slice(stray, code.indexOf("\n", code.indexOf("\n", stray) + 1));
    throw new UnsupportedError(`@unroll: not a loop of the form for (var i = 0u; i < N; i++): ${line}`);
  }
  return code;
}

/** A WGSL literal of `value` for a scalar type. */
function literal(type: string, value: number): string {
  if (type === "bool") return value ? "true" : "false";
  if (type === "u32") return `${value}u`;
  if (type === "i32") return `${value}i`;
  const text = String(value);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

/**
 * Turns `override` declarations into `const` declarations: those named in `constants` with those values,
 * the others with their default expressions (what the pipeline would use anyway). Returns the new source and
 * the constants that match no override (left to the pipeline, which reports unknown names). Constant bounds
 * let `// @unroll` loops and fixed-size arrays depend on them; every distinct value set is then its own
 * shader module.
 */
export function specialiseOverrides(
  code: string,
  constants: Record<string, number>,
): { code: string; overrides: Record<string, number> } {
  const overrides: Record<string, number> = {};
  for (const [name, value] of Object.entries(constants)) {
    const declaration = new RegExp(`override ${name}\\s*:\\s*(u32|i32|f32|bool)\\s*(?:=[^;]*)?;`);
    const match = declaration.exec(code);
    if (!match) {
      overrides[name] = value;
      continue;
    }
    code = code.replace(declaration, `const ${name}: ${match[1]} = ${literal(match[1], value)};`);
  }
  code = code.replace(/override (\w+\s*:\s*(?:u32|i32|f32|bool)\s*=[^;]*;)/g, "const $1");
  return { code, overrides };
}
