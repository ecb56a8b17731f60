/**
 * The `wgkv` command line: subcommand dispatch, help, and the rule that user mistakes end in one line on
 * stderr and a non-zero exit, never a stack trace.
 *
 * @module
 */

import { WgkvError } from "../errors.ts";
import { VERSION } from "../version.ts";
import { infoCommand } from "./info.ts";
import { tokenizeCommand } from "./tokenize.ts";
import { runCommand } from "./run.ts";
import { synthCommand } from "./synth.ts";
import { demoCommand } from "./demo.ts";
import { chatCommand } from "./chat.ts";
import { gateCommand } from "./gate.ts";
import { batchCommand } from "./batch.ts";
import { gpuCommand } from "./gpu.ts";

/** A subcommand: its one-line summary and its entry point (returns the exit status). */
export interface Command {
  /** One line for the command list. */
  summary: string;
  /** Runs the command with its own arguments. */
  main(args: string[]): Promise<number>;
}

/** Every subcommand by name. */
export const COMMANDS: Record<string, Command> = {
  demo: demoCommand,
  run: runCommand,
  chat: chatCommand,
  info: infoCommand,
  gpu: gpuCommand,
  tokenize: tokenizeCommand,
  synth: synthCommand,
  gate: gateCommand,
  batch: batchCommand,
};

function usage(): string {
  const lines = [
    `wgkv ${VERSION}: run GGUF Llama models on WebGPU, with Write-Gated KV for long contexts`,
    "",
    "usage: wgkv <command> [flags]      (wgkv <command> --help for its flags)",
    "",
    "commands:",
  ];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(10)} ${c.summary}`);
  return lines.join("\n");
}

/** Runs the CLI with `args` (without the program name) and returns the exit status. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-V") {
    console.log(`wgkv ${VERSION}`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`wgkv: unknown command "${name}" (commands: ${Object.keys(COMMANDS).join(", ")})`);
    return 2;
  }
  try {
    return await command.main(rest);
  } catch (e) {
    if (e instanceof WgkvError) {
      console.error(`wgkv ${name}: error: ${e.message.replaceAll("\n", " ")}`);
      return e.exitCode;
    }
    if (e instanceof Deno.errors.BrokenPipe) return 0;
    throw e;
  }
}
