/**
 * Errors meant for people. Every failure a user can cause (a bad file, an unknown flag, a model we do not
 * support, a cache that does not fit) is one of these classes, with a one-line message that names the
 * file or flag and what is wrong. The CLI prints `error: <message>` and exits with {@link WgkvError.exitCode};
 * anything else is a bug and keeps its stack trace.
 *
 * @module
 */

/** Base class of every user-facing error of wgkv. */
export class WgkvError extends Error {
  /** Process exit status the CLI uses for this error. */
  readonly exitCode: number = 1;
  /** An error with a message for people (one line, naming the file or flag and what is wrong). */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A file is missing, unreadable, truncated or malformed (names the file and the offending field). */
export class BadFileError extends WgkvError {}

/** A valid input that this version cannot handle: an architecture, tensor type or tokenizer model. */
export class UnsupportedError extends WgkvError {}

/** A command-line flag or library option is unknown or has an invalid value. */
export class BadFlagError extends WgkvError {
  /** Exit status 2, as for other usage errors. */
  override readonly exitCode = 2;
}

/** Something does not fit: context overflow, KV cache or weights larger than the device allows. */
export class OutOfMemoryError extends WgkvError {}

/** The GPU is missing or was lost. */
export class DeviceError extends WgkvError {}

/**
 * Not a failure: a forward call whose prefill signal was aborted stopped between two parts of its tokens
 * (the cache then holds an unknown share of them: a rewindable cache overwrites them on its next call, one
 * that is not must start again from position 0).
 */
export class PrefillAbortedError extends Error {
  /** Tokens of the call that had run when it stopped. */
  readonly done: number;
  /** An abort after `done` tokens of the call. */
  constructor(done: number) {
    super(`prefill stopped after ${done} tokens`);
    this.name = "PrefillAbortedError";
    this.done = done;
  }
}

/** Throws a {@link BadFileError} with `message` unless `condition` holds. */
export function checkFile(condition: unknown, message: string): asserts condition {
  if (!condition) throw new BadFileError(message);
}

/**
 * `e` with `source: ` put before its message when it is a {@link BadFileError} or {@link UnsupportedError}
 * that does not start with it (same class, `e` as the cause): for errors found in metadata by code that
 * does not know the file. Anything else, and every error when `source` is undefined, comes back unchanged.
 */
export function inFile(source: string | undefined, e: unknown): unknown {
  if (source === undefined || !(e instanceof BadFileError || e instanceof UnsupportedError)) return e;
  if (e.message.startsWith(`${source}: `)) return e;
  const ErrorClass = e.constructor as new (message: string, options?: ErrorOptions) => WgkvError;
  return new ErrorClass(`${source}: ${e.message}`, { cause: e });
}

/** The first non-empty line of an error's message (WebGPU errors often start with a blank line). */
export function firstLine(e: unknown): string {
  const message = e instanceof Error || (typeof e === "object" && e !== null && "message" in e)
    ? String((e as { message: unknown }).message)
    : String(e);
  return message.split("\n").find((line) => line.trim() !== "")?.trim() ?? "unknown error";
}
