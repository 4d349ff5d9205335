import type { VbfsError } from '../errors';
import type { VolumeCore } from './volume-core';

/**
 * Seq reservation: the writer hands out no seq above R, the highest reservation
 * the map log holds durably ("seqs up to R may be in use"), and open starts above
 * R. Without it, the records of a WAL tail cut at recovery (written, never
 * acknowledged) give their seqs back and the next open gives them to other data,
 * while the cut records' bytes may still be on the disk: with encryption, one
 * nonce (derived from the seq) would then seal two plaintexts.
 *
 * Recovery writes the first reservation (seq + step) before any write of an open.
 * From then on a new one (seq + step) is written in the background as soon as the
 * seqs handed out come within step/2 of R, so a write practically never waits;
 * when one must (more than step/2 seqs handed out while a reservation is being
 * written), it waits for it rather than take an unreserved seq.
 */
export class SeqReserve {
  /** Seqs up to this one are covered by a durable reservation. */
  private durable: number;
  private inFlight: Promise<void> | null = null;
  /** Reservations written by the writer since open (recovery's at open not counted). */
  reservations = 0;
  /** Times a write had to wait for a reservation. */
  waits = 0;

  constructor(
    private readonly core: VolumeCore,
    /** What a failed reservation does to the volume (the writer's failUnlessNoSpace). */
    private readonly onError: (err: unknown) => VbfsError,
  ) {
    this.durable = core.map.reserved;
  }

  /** The highest durable reservation. */
  get reserved(): number {
    return this.durable;
  }

  /**
   * True if the next `n` seqs may be handed out now. Starts a reservation in the
   * background when fewer than step/2 seqs would be left after them.
   */
  covers(n: number): boolean {
    const need = this.core.seq + n;
    if (this.durable - need < this.core.tunables.seqReserveStep / 2) this.kick(n);
    return need <= this.durable;
  }

  /** Wait until the next `n` seqs are reserved (counted as a wait: the write path stalls). */
  async wait(n: number): Promise<void> {
    this.waits++;
    while (this.core.seq + n > this.durable) {
      if (this.core.failed) throw this.core.failed;
      try {
        await this.start(n);
      } catch (err) {
        throw this.onError(err);
      }
    }
  }

  private kick(n: number): void {
    if (this.inFlight || this.core.failed || this.core.closed) return;
    this.start(n).catch((err: unknown) => {
      // Out of space leaves the volume writable: the next write kicks again (or waits).
      this.onError(err);
    });
  }

  /** The reservation in flight, or a new one: R' = seq + max(step, n). */
  private start(n: number): Promise<void> {
    if (!this.inFlight) {
      const upTo = this.core.seq + Math.max(this.core.tunables.seqReserveStep, n);
      this.inFlight = this.core.map
        .reserve(upTo)
        .then(() => {
          if (upTo > this.durable) this.durable = upTo;
          this.reservations++;
        })
        .finally(() => {
          this.inFlight = null;
        });
    }
    return this.inFlight;
  }
}
