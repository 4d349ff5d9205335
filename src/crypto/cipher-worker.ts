import { parentPort } from 'node:worker_threads';
import type { KeyObject } from 'node:crypto';
import { DOMAIN_RECORD, TAG_BYTES, VolumeCipher } from './volume-cipher';

/**
 * The thread side of cipher-pool.ts: opens runs of sealed records in place, and
 * seals batches of a write's records. One message per run or batch (many
 * records), the buffers transferred both ways, so a 1 MiB run costs two
 * postMessage calls and no copy here.
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

/** Seal records whose payloads lie back to back in buf (lens[k] bytes each), into out. */
export interface SealRequest {
  op: 'seal';
  id: number;
  /** block, seq, flags of each record (3 numbers each) */
  meta: Float64Array;
  lens: Uint32Array;
  buf: ArrayBuffer;
  /** room for the sealed payloads (sum of lens + 16 per record, at least) */
  out: ArrayBuffer;
}

/** `out` with the sealed payloads back to back, lens[k] + 16 bytes each, in request order; `buf` handed back for reuse. */
export interface SealReply {
  id: number;
  buf: ArrayBuffer;
  out: ArrayBuffer;
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
  const n = m.lens.length;
  const plain = Buffer.from(m.buf);
  const out = Buffer.from(m.out);
  let from = 0;
  let at = 0;
  for (let k = 0; k < n; k++) {
    const len = m.lens[k] as number;
    at += c.sealInto(
      DOMAIN_RECORD,
      { block: m.meta[3 * k] as number, seq: m.meta[3 * k + 1] as number, flags: m.meta[3 * k + 2] as number },
      plain.subarray(from, from + len),
      out,
      at,
    );
    from += len;
  }
  const reply: SealReply = { id: m.id, buf: m.buf, out: m.out };
  parentPort?.postMessage(reply, [m.buf, m.out]);
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
