/**
 * Flag parsing for the subcommands: `node:util` parseArgs in strict mode, with every mistake turned into a
 * one-line {@link BadFlagError} that names the flag.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { BadFlagError, firstLine } from "../errors.ts";

/** A flag's description: parseArgs' option plus help text. */
export interface FlagSpec {
  /** `string` for valued flags, `boolean` for switches. */
  type: "string" | "boolean";
  /** One-letter alias. */
  short?: string;
  /** Help text; the placeholder for the value goes first in capitals, e.g. "N  tokens to generate". */
  help: string;
  /** Whether the flag may repeat (values collected into an array). */
  multiple?: boolean;
}

/** Parsed flags and positionals. */
export interface ParsedFlags {
  /** Values by long flag name. */
  values: Record<string, string | boolean | string[] | undefined>;
  /** Arguments that are not flags. */
  positionals: string[];
}

/**
 * `-n -1` and `--temp -0.5` as `--n-predict=-1` and `--temp=-0.5`: a negative number after a flag that
 * takes a value is that value (as in llama.cpp), where the parser would take it for a flag.
 */
function joinNegativeValues(args: string[], spec: Record<string, FlagSpec>): string[] {
  const takesValue = (arg: string): string | undefined => {
    for (const [name, s] of Object.entries(spec)) {
      if (s.type === "string" && (arg === `--${name}` || (s.short !== undefined && arg === `-${s.short}`))) {
        return name;
      }
    }
    return undefined;
  };
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i] === "--" ? undefined : takesValue(args[i]);
    if (args[i] === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (name !== undefined && i + 1 < args.length && /^-\d+(\.\d+)?$/.test(args[i + 1])) {
      out.push(`--${name}=${args[++i]}`);
    } else {
      out.push(args[i]);
    }
  }
  return out;
}

/** Parses `args` for `command` against `spec`; unknown flags and missing values are {@link BadFlagError}s. */
export function parseFlags(command: string, args: string[], spec: Record<string, FlagSpec>): ParsedFlags {
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {};
  for (const [name, s] of Object.entries(spec)) {
    options[name] = { type: s.type };
    if (s.short) options[name].short = s.short;
    if (s.multiple) options[name].multiple = true;
  }
  try {
    const { values, positionals } = parseArgs({
      args: joinNegativeValues(args, spec),
      options,
      allowPositionals: true,
      strict: true,
    });
    return { values: values as ParsedFlags["values"], positionals };
  } catch (e) {
    const msg = firstLine(e);
    const flag = msg.match(/'(-[^']*)'/)?.[1];
    if (/argument is ambiguous/.test(msg) && flag) {
      throw new BadFlagError(`${command}: the value of ${flag} looks like a flag; write ${flag}=VALUE`);
    }
    if (/Unknown option/.test(msg)) {
      throw new BadFlagError(`${command}: unknown flag ${flag ?? msg} (see \`wgkv ${command} --help\`)`);
    }
    throw new BadFlagError(`${command}: ${msg.replace(/\.$/, "")}`);
  }
}

/** Renders the help of a subcommand from its spec. */
export function helpText(usage: string, summary: string, spec: Record<string, FlagSpec>): string {
  const lines = [`usage: ${usage}`, "", summary, "", "flags:"];
  for (const [name, s] of Object.entries(spec)) {
    const names = (s.short ? `-${s.short}, ` : "    ") + `--${name}`;
    lines.push(`  ${names.padEnd(24)} ${s.help}`);
  }
  return lines.join("\n");
}

/** Reads flag `name` as a number (integer when `integer`), or `fallback` when absent. */
export function numberFlag(
  values: ParsedFlags["values"],
  name: string,
  fallback: number,
  opts?: { integer?: boolean; min?: number; max?: number },
): number;
export function numberFlag(
  values: ParsedFlags["values"],
  name: string,
  fallback: undefined,
  opts?: { integer?: boolean; min?: number; max?: number },
): number | undefined;
export function numberFlag(
  values: ParsedFlags["values"],
  name: string,
  fallback: number | undefined,
  opts: { integer?: boolean; min?: number; max?: number } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return fallback;
  const text = String(raw).trim();
  const v = Number(text);
  const want = opts.integer ? "an integer" : "a number";
  if (text === "" || !Number.isFinite(v) || (opts.integer && !Number.isInteger(v))) {
    throw new BadFlagError(`--${name}: "${raw}" is not ${want}`);
  }
  if (opts.min !== undefined && v < opts.min) throw new BadFlagError(`--${name}: ${v} is below ${opts.min}`);
  if (opts.max !== undefined && v > opts.max) throw new BadFlagError(`--${name}: ${v} is above ${opts.max}`);
  return v;
}

/** Reads flag `name` as a string, throwing a {@link BadFlagError} when required and absent or empty. */
export function stringFlag(values: ParsedFlags["values"], name: string, required: true): string;
export function stringFlag(values: ParsedFlags["values"], name: string, required?: false): string | undefined;
export function stringFlag(
  values: ParsedFlags["values"],
  name: string,
  required = false,
): string | undefined {
  const v = values[name];
  if (v === undefined || v === false) {
    if (required) throw new BadFlagError(`--${name} is required`);
    return undefined;
  }
  if (required && v === "") throw new BadFlagError(`--${name}: the value is empty`);
  return String(v);
}

/** Reads flag `name` as one of `choices`. */
export function choiceFlag<T extends string>(
  values: ParsedFlags["values"],
  name: string,
  choices: readonly T[],
  fallback: T,
): T {
  const v = values[name];
  if (v === undefined) return fallback;
  if (!choices.includes(v as T)) {
    throw new BadFlagError(`--${name}: "${v}" is not one of ${choices.join(", ")}`);
  }
  return v as T;
}
