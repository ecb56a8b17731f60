/**
 * Staging buffers for reading results back to the CPU without waiting out Deno's map polling.
 *
 * Deno's WebGPU (2.x) completes a `mapAsync` inside the call: it blocks until the queue is idle, which is
 * when wgpu maps the buffer, and then resolves the promise only after a 10 ms sleep of its polling loop.
 * Wherever the next GPU work waits for the result (every WG-KV prefill step waits for the gate's flags,
 * every decode chain for its tokens, every prompt for its first token), that sleep is idle GPU time. So a
 * read here copies the range as soon as `mapAsync` returns: `getMappedRange` succeeds only once wgpu has
 * mapped the buffer (its own state, set after the GPU work that wrote it is done) and throws otherwise, and
 * then the read waits for the promise as the WebGPU spec has it. The buffer is unmapped when the promise
 * settles, and {@link StagingRing.take} waits for that before it hands the buffer out again; a ring of two
 * lets one step copy into a buffer while the read of the other settles.
 *
 * A buffer is read the early way only after one read the spec's way (Deno keeps the map mode of a
 * buffer's last completed mapping, which a read of the range needs). This leans on how Deno's WebGPU is
 * built, so {@link defaultReadbackMode} takes the early way only on the Deno releases it was checked on.
 * @module
 */

import { DeviceError, firstLine } from "../errors.ts";

/** Usage flags of a staging buffer: MAP_READ | COPY_DST. */
const STAGING_USAGE = 0x0001 | 0x0008;

/** How {@link StagingRing.read} gets a mapped range back. */
export type ReadbackMode =
  /** Copies the range once `mapAsync` returns if the buffer is mapped by then, else as "wait" does. */
  | "early"
  /** Waits for `mapAsync`'s promise, as the WebGPU spec has it. */
  | "wait";

/** Deno releases whose WebGPU the early reads were checked on (2.9: a blocking `mapAsync`, see above). */
const EARLY_READ_DENO = /^2\.9\./;

/** "early" on the Deno releases the early reads were checked on, else "wait" (the spec's way). */
export function defaultReadbackMode(denoVersion: string = Deno.version.deno): ReadbackMode {
  return EARLY_READ_DENO.test(denoVersion) ? "early" : "wait";
}

/** A few staging buffers of one size, taken in turn for copies back to the CPU. */
export class StagingRing {
  readonly #buffers: GPUBuffer[];
  readonly #mode: ReadbackMode;
  readonly #primed = new Set<GPUBuffer>();
  readonly #settling = new Map<GPUBuffer, Promise<void>>();
  #next = 0;

  /**
   * `count` buffers (default 2) of `bytes` bytes each, labelled `label`, read back as `mode` says (default
   * "early").
   */
  constructor(device: GPUDevice, label: string, bytes: number, count = 2, mode: ReadbackMode = "early") {
    this.#buffers = Array.from(
      { length: count },
      (_, i) => device.createBuffer({ label: `${label} ${i}`, size: bytes, usage: STAGING_USAGE }),
    );
    this.#mode = mode;
  }

  /** Bytes of each buffer. */
  get bytes(): number {
    return this.#buffers[0].size;
  }

  /** The next buffer of the ring, free to copy into once the read before it on this buffer has settled. */
  async take(): Promise<GPUBuffer> {
    const buffer = this.#buffers[this.#next];
    this.#next = (this.#next + 1) % this.#buffers.length;
    await this.#settling.get(buffer);
    return buffer;
  }

  /**
   * Copies the first `bytes` bytes of `buffer` (one of this ring's, taken by {@link take} and written by
   * submitted GPU work) back to the CPU. A mapping that fails (e.g. the device was lost) rejects with a
   * one-line {@link DeviceError} naming the buffer; the buffer is then unusable, like its device.
   */
  async read(buffer: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    await this.#settling.get(buffer);
    const mapping = buffer.mapAsync(0x0001, /* READ */ 0, bytes);
    if (this.#mode === "early" && this.#primed.has(buffer)) {
      let copy: ArrayBuffer | undefined;
      try {
        copy = buffer.getMappedRange(0, bytes).slice(0);
      } catch {
        // Not mapped yet: wait for the promise below.
      }
      if (copy) {
        const settled = mapping.then(() => unmapQuietly(buffer), () => {}).finally(() =>
          this.#settling.delete(buffer)
        );
        this.#settling.set(buffer, settled);
        return copy;
      }
    }
    try {
      await mapping;
    } catch (e) {
      throw new DeviceError(`reading '${buffer.label}' back from the GPU failed: ${firstLine(e)}`);
    }
    const out = buffer.getMappedRange(0, bytes).slice(0);
    buffer.unmap();
    this.#primed.add(buffer);
    return out;
  }

  /** The ring's buffers (to destroy with their owner; a read still settling then ends without an unmap). */
  get buffers(): readonly GPUBuffer[] {
    return this.#buffers;
  }
}

/** Unmaps `buffer` unless it was destroyed meanwhile (its owner may go before a read settles). */
function unmapQuietly(buffer: GPUBuffer): void {
  try {
    buffer.unmap();
  } catch {
    // Destroyed: nothing left to unmap.
  }
}
