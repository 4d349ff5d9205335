import { parentPort } from 'node:worker_threads';
import type { KeyObject } from 'node:crypto';
import { DOMAIN_RECORD, TAG_BYTES, VolumeCipher } from './volume-cipher';

/**
 * The thread side of cipher-pool.ts: opens runs of sealed records in place, and
 * seals batches of a write's records in place in the shared write buffer. One
 * message per run or batch (many records); a run's buffer is transferred both
 * ways, so a 1 MiB run costs two postMessage calls and no copy here.
 */
export interface OpenRequest {
  op: 'open';
  id: number;
  /** block, seq, flags of each record (3 numbers each) */
  meta: Float64Array;
  /** where each sealed payload starts in buf, and its sealed length */
  offs: Uint32Array;
  lens: Uint32Array;
  buf: ArrayBuffer;
}

export interface OpenReply {
  id: number;
  buf: ArrayBuffer;
  /** 1: the record's plaintext (sealed length - 16 bytes) is now at its offset; 0: it failed authentication (zeroed) */
  ok: Uint8Array;
}

/**
 * Seal records in place, in shared memory (the write buffer's slabs, arena.ts):
 * record k's payload is the lens[k] bytes at offset src[2k + 1] of mem[src[2k]],
 * and its sealed payload (lens[k] + 16 bytes) goes to offset dst[2k + 1] of
 * mem[dst[2k]] (it may be the same place: a compressed payload is put in the
 * sealed room first). Nothing is copied into the message or back.
 */
export interface SealRequest {
  op: 'seal';
  id: number;
  /** block, seq, flags of each record (3 numbers each) */
  meta: Float64Array;
  lens: Uint32Array;
  mem: SharedArrayBuffer[];
  src: Uint32Array;
  dst: Uint32Array;
}

/** Every sealed payload of the request is in place. */
export interface SealReply {
  id: number;
}

let cipher: VolumeCipher | null = null;

parentPort?.on('message', (m: { init: { dataKey: KeyObject; volumeId: string } } | OpenRequest | SealRequest) => {
  if ('init' in m) {
    cipher = VolumeCipher.fromWorker(m.init);
    return;
  }
  if (m.op === 'seal') seal(cipher as VolumeCipher, m);
  else open(cipher as VolumeCipher, m);
});

function seal(c: VolumeCipher, m: SealRequest): void {
  const mem = m.mem.map((b) => Buffer.from(b));
  for (let k = 0; k < m.lens.length; k++) {
    const len = m.lens[k] as number;
    const from = m.src[2 * k + 1] as number;
    const plain = (mem[m.src[2 * k] as number] as Buffer).subarray(from, from + len);
    // GCM reads the whole payload before the sealed bytes are copied out: src === dst is safe.
    c.sealInto(
      DOMAIN_RECORD,
      { block: m.meta[3 * k] as number, seq: m.meta[3 * k + 1] as number, flags: m.meta[3 * k + 2] as number },
      plain,
      mem[m.dst[2 * k] as number] as Buffer,
      m.dst[2 * k + 1] as number,
    );
  }
  const reply: SealReply = { id: m.id };
  parentPort?.postMessage(reply);
}

function open(c: VolumeCipher, m: OpenRequest): void {
  const buf = Buffer.from(m.buf);
  const n = m.offs.length;
  const ok = new Uint8Array(n);
  for (let k = 0; k < n; k++) {
    const off = m.offs[k] as number;
    const len = m.lens[k] as number;
    try {
      const plain = c.open(
        DOMAIN_RECORD,
        { block: m.meta[3 * k] as number, seq: m.meta[3 * k + 1] as number, flags: m.meta[3 * k + 2] as number },
        buf.subarray(off, off + len),
      );
      plain.copy(buf, off);
      ok[k] = 1;
    } catch {
      buf.fill(0, off, off + Math.max(0, len - TAG_BYTES)); // nothing unauthenticated goes back
    }
  }
  const reply: OpenReply = { id: m.id, buf: m.buf, ok };
  parentPort?.postMessage(reply, [m.buf, ok.buffer]);
}
