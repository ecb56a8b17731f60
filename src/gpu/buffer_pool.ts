/**
 * A small pool of reusable GPU buffers for transient work (staging copies back to the CPU, scratch space).
 * {@link BufferPool.acquire} hands out a buffer of a usage and size class, {@link BufferPool.release} takes
 * it back once no mapping and no later-recorded GPU work needs it, and the next acquire of the same usage
 * and size class gets that buffer again instead of a fresh allocation.
 *
 * Sizes are rounded up to a power of two of at least {@link MIN_POOLED_BYTES} bytes, so a pooled buffer may
 * be larger than asked: callers address the bytes they asked for explicitly (copy, map and bind with an
 * offset and a size). The idle buffers kept are capped in bytes; a release past the cap destroys the buffer,
 * and a size class above the cap is never pooled (such buffers are made at the size asked and destroyed on
 * release). A buffer's label is the one given when it was made (WebGPU labels do not change on reuse).
 *
 * @module
 */

/** The smallest size class in bytes: every pooled buffer is a power of two of at least this. */
export const MIN_POOLED_BYTES = 256;

/** The default cap on the bytes of idle buffers a pool keeps (64 MiB). */
export const DEFAULT_MAX_POOLED_BYTES = 64 * 1024 * 1024;

/** The size class of a request for `bytes` bytes: the smallest power of two ≥ `bytes` and ≥ 256. */
export function sizeClass(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new RangeError(`buffer pool: a size must be a non-negative integer, got ${bytes}`);
  }
  let size = MIN_POOLED_BYTES;
  while (size < bytes) size *= 2;
  return size;
}

/** Counters of a {@link BufferPool}, for tests and diagnostics. */
export interface BufferPoolStats {
  /** Buffers made by the pool since it was created. */
  readonly created: number;
  /** Acquires served by an idle buffer instead of a new one. */
  readonly reused: number;
  /** Buffers the pool destroyed (over the cap, never pooled, discarded or at {@link BufferPool.destroy}). */
  readonly destroyed: number;
  /** Idle buffers kept for reuse. */
  readonly idleBuffers: number;
  /** Bytes of those idle buffers (at most {@link BufferPool.maxPooledBytes}). */
  readonly idleBytes: number;
  /** Buffers handed out and not yet released. */
  readonly inUse: number;
}

/** Reusable GPU buffers keyed by usage and size class, with a cap on the idle bytes kept. */
export class BufferPool {
  /** The most bytes of idle buffers kept for reuse; beyond it released buffers are destroyed. */
  readonly maxPooledBytes: number;
  readonly #device: GPUDevice;
  /** Idle buffers by `usage:sizeClass`. */
  readonly #idle = new Map<string, GPUBuffer[]>();
  /** Buffers handed out, with their pool key (undefined for a size class above the cap: never pooled). */
  readonly #inUse = new Map<GPUBuffer, string | undefined>();
  #idleBytes = 0;
  #idleBuffers = 0;
  #created = 0;
  #reused = 0;
  #destroyed = 0;

  /** A pool making its buffers on `device` and keeping at most `maxPooledBytes` bytes of idle ones. */
  constructor(device: GPUDevice, maxPooledBytes: number = DEFAULT_MAX_POOLED_BYTES) {
    if (!Number.isSafeInteger(maxPooledBytes) || maxPooledBytes < 0) {
      throw new RangeError(`buffer pool: the cap must be a non-negative integer, got ${maxPooledBytes}`);
    }
    this.#device = device;
    this.maxPooledBytes = maxPooledBytes;
  }

  /**
   * A buffer with `usage` of at least `bytes` bytes: an idle one of the same usage and size class when
   * there is one, else a new one labelled `label`. Hand it back with {@link BufferPool.release} (unmapped).
   */
  acquire(bytes: number, usage: number, label = "pooled buffer"): GPUBuffer {
    const size = sizeClass(bytes);
    if (size > this.maxPooledBytes) {
      const exact = this.#create(label, Math.max(4, Math.ceil(bytes / 4) * 4), usage);
      this.#inUse.set(exact, undefined);
      return exact;
    }
    const key = `${usage}:${size}`;
    const idle = this.#idle.get(key)?.pop();
    if (idle) {
      this.#idleBytes -= size;
      this.#idleBuffers--;
      this.#reused++;
      this.#inUse.set(idle, key);
      return idle;
    }
    const buffer = this.#create(label, size, usage);
    this.#inUse.set(buffer, key);
    return buffer;
  }

  /**
   * Takes back `buffer` (from {@link BufferPool.acquire}, unmapped) for reuse, or destroys it when the idle buffers
   * would pass the cap. Throws for a buffer this pool did not hand out, one released already, or one still
   * mapped or being mapped (unmap it first).
   */
  release(buffer: GPUBuffer): void {
    if (!this.#inUse.has(buffer)) {
      throw new Error(
        `buffer pool: '${buffer.label}' was not handed out by this pool, or was released already`,
      );
    }
    if (buffer.mapState !== "unmapped") {
      throw new Error(`buffer pool: '${buffer.label}' is ${buffer.mapState}; unmap it before releasing it`);
    }
    const key = this.#inUse.get(buffer);
    this.#inUse.delete(buffer);
    if (key === undefined || this.#idleBytes + buffer.size > this.maxPooledBytes) {
      this.#destroy(buffer);
      return;
    }
    const list = this.#idle.get(key);
    if (list) list.push(buffer);
    else this.#idle.set(key, [buffer]);
    this.#idleBytes += buffer.size;
    this.#idleBuffers++;
  }

  /**
   * Destroys `buffer` instead of pooling it, e.g. one whose mapping failed (it cannot be reused). A buffer
   * the pool no longer knows (destroyed with the pool meanwhile) is destroyed all the same.
   */
  discard(buffer: GPUBuffer): void {
    this.#inUse.delete(buffer);
    this.#destroy(buffer);
  }

  /** The pool's counters. */
  get stats(): BufferPoolStats {
    return {
      created: this.#created,
      reused: this.#reused,
      destroyed: this.#destroyed,
      idleBuffers: this.#idleBuffers,
      idleBytes: this.#idleBytes,
      inUse: this.#inUse.size,
    };
  }

  /** Destroys every buffer of the pool, idle and handed out alike. */
  destroy(): void {
    for (const list of this.#idle.values()) for (const buffer of list) this.#destroy(buffer);
    for (const buffer of this.#inUse.keys()) this.#destroy(buffer);
    this.#idle.clear();
    this.#inUse.clear();
    this.#idleBytes = 0;
    this.#idleBuffers = 0;
  }

  #create(label: string, size: number, usage: number): GPUBuffer {
    this.#created++;
    return this.#device.createBuffer({ label, size, usage });
  }

  #destroy(buffer: GPUBuffer): void {
    this.#destroyed++;
    buffer.destroy();
  }
}
