/**
 * Per-kernel GPU timing with `timestamp-query`. The profiler opens one compute pass per label with
 * timestamp writes at its start and end, resolves the query set into a buffer at the end of the command
 * buffer, and after the submit reads it back and adds each pass's duration to a per-label total.
 * It knows nothing about ops: anything that records work into a labelled compute pass can be timed.
 *
 * When the device has no timestamp queries (or was created without `profile: true`), passes are opened
 * untimed, {@link GpuProfiler.available} is false and {@link GpuProfiler.reason} says why; callers then
 * fall back to the wall-clock time of whole submits.
 *
 * Typical use, one step:
 * ```ts
 * const encoder = gpu.device.createCommandEncoder();
 * encodeOps(encoder, ops, profiler);     // one timed pass per op
 * profiler.resolve(encoder);
 * gpu.device.queue.submit([encoder.finish()]);
 * await profiler.collect();
 * console.error(formatProfile(profiler.totals()));
 * ```
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import type { Gpu } from "./device.ts";

/** Accumulated GPU time of every pass recorded under one label. */
export interface ProfileRow {
  /** The label passes were recorded under. */
  label: string;
  /** Number of passes measured. */
  calls: number;
  /** Sum of their durations in milliseconds. */
  totalMs: number;
}

/** Most passes one query set can time (two timestamps each, WebGPU caps a query set at 4096). */
export const MAX_TIMED_PASSES = 2048;

/** Times labelled compute passes with timestamp queries and aggregates the durations by label. */
export class GpuProfiler {
  /** Whether passes are actually timed. */
  readonly available: boolean;
  /** Why timing is unavailable (undefined when it is available). */
  readonly reason: string | undefined;
  /** Passes that can be recorded between two {@link GpuProfiler.collect} calls. */
  readonly capacity: number;
  readonly #gpu: Gpu;
  readonly #querySet: GPUQuerySet | undefined;
  readonly #resolveBuf: GPUBuffer | undefined;
  readonly #readBuf: GPUBuffer | undefined;
  #labels: string[] = [];
  #resolved = 0;
  readonly #totals = new Map<string, ProfileRow>();

  /** Sets up a query set for `capacity` passes (default and maximum 2048). */
  constructor(gpu: Gpu, capacity = MAX_TIMED_PASSES) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_TIMED_PASSES) {
      throw new BadFlagError(
        `profiler: capacity must be an integer in [1, ${MAX_TIMED_PASSES}], got ${capacity}`,
      );
    }
    this.#gpu = gpu;
    this.capacity = capacity;
    this.available = gpu.hasTimestamps;
    if (!gpu.hasTimestamps) {
      this.reason = "this GPU device has no timestamp-query (or was opened without profile: true); " +
        "only whole submits can be timed";
      return;
    }
    this.#querySet = gpu.device.createQuerySet({ label: "profiler", type: "timestamp", count: 2 * capacity });
    const bytes = 2 * capacity * 8;
    this.#resolveBuf = gpu.device.createBuffer({
      label: "profiler.resolve",
      size: bytes,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.#readBuf = gpu.device.createBuffer({
      label: "profiler.read",
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * Begins a compute pass on `encoder` whose duration is added to `label` (untimed when profiling is
   * unavailable). The caller records its work and ends the pass.
   */
  beginPass(encoder: GPUCommandEncoder, label: string): GPUComputePassEncoder {
    if (!this.#querySet) return encoder.beginComputePass({ label });
    if (this.#resolved > 0) {
      throw new BadFlagError("profiler: collect() the resolved timings before recording more passes");
    }
    const slot = this.#labels.length;
    if (slot >= this.capacity) {
      throw new BadFlagError(
        `profiler: more than ${this.capacity} passes before collect(); raise its capacity`,
      );
    }
    this.#labels.push(label);
    return encoder.beginComputePass({
      label,
      timestampWrites: {
        querySet: this.#querySet,
        beginningOfPassWriteIndex: 2 * slot,
        endOfPassWriteIndex: 2 * slot + 1,
      },
    });
  }

  /** Records, at the end of `encoder`, the copy of this batch's timestamps to a readable buffer. */
  resolve(encoder: GPUCommandEncoder): void {
    if (!this.#querySet || this.#labels.length === 0) return;
    const count = 2 * this.#labels.length;
    encoder.resolveQuerySet(this.#querySet, 0, count, this.#resolveBuf!, 0);
    encoder.copyBufferToBuffer(this.#resolveBuf!, 0, this.#readBuf!, 0, count * 8);
    this.#resolved = this.#labels.length;
  }

  /**
   * After the command buffer holding {@link GpuProfiler.resolve} was submitted: reads the timestamps,
   * adds every pass to its label's total and returns the totals so far (largest first). A device lost
   * meanwhile is a `DeviceError` (the batch is then dropped).
   */
  async collect(): Promise<ProfileRow[]> {
    if (this.#readBuf && this.#resolved > 0) {
      const n = this.#resolved;
      const labels = this.#labels;
      let stamps: BigInt64Array;
      try {
        await this.#gpu.mapForReading(this.#readBuf, "the profiler's timestamps", 0, 2 * n * 8);
        stamps = new BigInt64Array(this.#readBuf.getMappedRange(0, 2 * n * 8).slice(0));
        this.#readBuf.unmap();
      } finally {
        // Read or not, this batch is over: a failed one is not read again.
        this.#labels = [];
        this.#resolved = 0;
      }
      for (let i = 0; i < n; i++) {
        // Timestamps may be reset or reordered by the driver; a negative span counts as zero.
        const ns = Number(stamps[2 * i + 1] - stamps[2 * i]);
        this.#add(labels[i], Math.max(0, ns) / 1e6);
      }
    }
    this.#labels = [];
    this.#resolved = 0;
    return this.totals();
  }

  /** The per-label totals measured so far, largest total first. */
  totals(): ProfileRow[] {
    return [...this.#totals.values()].map((r) => ({ ...r })).sort((a, b) => b.totalMs - a.totalMs);
  }

  /** Forgets the totals (pending passes are kept). */
  reset(): void {
    this.#totals.clear();
  }

  /** Releases the query set and buffers. */
  destroy(): void {
    this.#querySet?.destroy();
    this.#resolveBuf?.destroy();
    this.#readBuf?.destroy();
  }

  #add(label: string, ms: number): void {
    const row = this.#totals.get(label);
    if (row) {
      row.calls++;
      row.totalMs += ms;
    } else {
      this.#totals.set(label, { label, calls: 1, totalMs: ms });
    }
  }
}

/** Formats profile rows as an aligned text table with a share column and a total line. */
export function formatProfile(rows: readonly ProfileRow[]): string {
  const sum = rows.reduce((s, r) => s + r.totalMs, 0);
  const width = Math.max(5, ...rows.map((r) => r.label.length));
  const lines = [
    `${"label".padEnd(width)}  ${"calls".padStart(7)}  ${"total ms".padStart(10)}  ${
      "ms/call".padStart(9)
    }  share`,
  ];
  for (const r of rows) {
    const share = sum > 0 ? (100 * r.totalMs / sum).toFixed(1) : "0.0";
    lines.push(
      `${r.label.padEnd(width)}  ${String(r.calls).padStart(7)}  ${r.totalMs.toFixed(3).padStart(10)}  ` +
        `${(r.totalMs / r.calls).toFixed(4).padStart(9)}  ${share.padStart(5)}%`,
    );
  }
  lines.push(`${"total".padEnd(width)}  ${"".padStart(7)}  ${sum.toFixed(3).padStart(10)}`);
  return lines.join("\n");
}

/** Adds up the rows of every layer (`blk.N.x` → `blk.*.x`), largest total first. */
export function foldLayers(rows: readonly ProfileRow[]): ProfileRow[] {
  const folded = new Map<string, ProfileRow>();
  for (const row of rows) {
    const label = row.label.replace(/^blk\.\d+\./, "blk.*.");
    const acc = folded.get(label) ?? { label, calls: 0, totalMs: 0 };
    acc.calls += row.calls;
    acc.totalMs += row.totalMs;
    folded.set(label, acc);
  }
  return [...folded.values()].sort((a, b) => b.totalMs - a.totalMs);
}
