import type { Backend } from '../backend/backend';
import type { KeyMaterial } from '../crypto/key-source';
import type { ScryptParams } from '../format/encryption-meta';
import type { FileIO } from '../io/file-io';
import type { Compression, Durability, Logger, VolumeInfo } from '../types';

/** Options and statistics of the store and its volumes (the shared types are in src/types.ts). */

export interface StoreOptions {
  /** File layer for everything under the store directory (default: real node:fs). */
  fileIO?: FileIO;
  /** Where chunk objects go (default: FileBackend in `<store>/objects`). */
  backend?: Backend;
  /**
   * Where volume metadata and block maps live: 'local' (default: `<store>/volumes/<name>/`)
   * or 'backend' (the bucket: a volume opens on any machine from the backend alone;
   * the store directory keeps the WAL, the LOCK and caches). Needs `backend`.
   */
  metadata?: 'local' | 'backend';
  logger?: Logger;
  /**
   * Called at named points of the flush and checkpoint path
   * ('flush:beforeChunkWrite', 'flush:afterChunkWrite', 'flush:afterMapCommit',
   * 'flush:beforeWalReclaim', 'flush:afterWalReclaim', 'checkpoint:beforeRename',
   * 'checkpoint:afterRename', 'create:beforeRename', and around the seq reservation
   * 'reserve:beforeWrite', 'reserve:afterSync'), so crash tests can stop
   * between any two steps.
   */
  failpoint?: (name: string) => void | Promise<void>;
  /**
   * Memory budget shared by every volume this store opens: write buffers plus read
   * caches (default: a quarter of RAM, at least 256 MiB, at most 1 GiB). Each open
   * volume gets an equal share (80% write buffer, 20% cache, each at most its own
   * writeBufferBytes / cacheBytes), recomputed when a volume opens or closes.
   */
  memoryBytes?: number;
  /**
   * TTL of the lease a writer takes on a volume whose state lives in a bucket
   * (src/backend/lease.ts; default 30 s, `vbfs mount --lease-ttl`). Volumes in a
   * local store directory have their LOCK file instead and ignore it.
   */
  leaseTtlMs?: number;
  /**
   * Local disk cache of chunk objects in `<store>/cache`, in bytes, in front of a
   * remote backend (S3; src/backend/disk-cache.ts): LRU, kept across restarts.
   * Default 1 GiB for a remote backend, none for the local file backend (whose
   * objects are on this disk already); 0 turns it off. CLI: `--disk-cache-bytes`.
   */
  diskCacheBytes?: number;
}

export interface VolumeCreateOptions {
  /** Volume size in bytes; a multiple of blockSize. */
  size: number;
  blockSize?: number; // default 4096, power of two 512..65536
  durability?: Durability; // default 'batched'
  compression?: Compression; // default 'none'
  /**
   * Encrypt the volume at rest (AES-256-GCM, docs/FORMAT.md "Encryption"): `key` as
   * readKeyMaterial() returns it (a raw 32-byte key, or a passphrase stretched with
   * scrypt, default N=2^17 r=8 p=1). Every later open needs the same key.
   */
  encryption?: { key: KeyMaterial; scrypt?: ScryptParams };
}

/** A volume as listed: its metadata, or why it cannot be used (the store lists it anyway). */
export interface VolumeState {
  name: string;
  info?: VolumeInfo;
  /** Set when the volume is damaged (volume.json missing or unreadable): the reason. */
  damaged?: string;
}

/** Tunables. Every one has a default; tests use tiny values. */
export interface VolumeTunables {
  walSegmentBytes: number; // max WAL segment size (default 64 MiB)
  walPreallocate: boolean; // WAL segments zero-filled to full size and reclaimed ones reused, so an fdatasync needs no journal commit (default false: through FUSE it measured no faster, and it costs a 64 MiB zero fill before the first write and up to 3 x 64 MiB of WAL per volume)
  chunkBytes: number; // target chunk object size (default 4 MiB)
  writeBufferBytes: number; // cap on Hot+Pending data in memory; writers wait above it (default 256 MiB)
  flushBytes: number; // start a background flush when this much is pending (default 32 MiB)
  flushIntervalMs: number; // flush pending data at least this often (default 5000)
  flushWaveChunks: number; // chunk objects a flush wave writes in parallel, one map commit per wave (default 4; bench:s3 --flush-wave compares others)
  flushWaves: number; // flush waves in flight at once: the next wave's chunks are written while a wave's map delta commits (default 1; 2 over a remote backend; bench:s3 --flush-waves compares others)
  batchBlocks: number; // batched mode: start a sync after this many unsynced blocks; writers wait at twice that (default 1024)
  batchMs: number; // batched mode: sync at most this long after a write (default 5)
  cacheBytes: number; // read cache size at most (default 1 GiB; the memory share minus the write buffer bounds it)
  checkpointBytes: number; // write a checkpoint when the map log exceeds this (default 16 MiB)
  readaheadBytes: number; // sequential-read readahead window (default 1 MiB, 0 = off)
  noSpaceRetryMs: number; // store disk full: retry the failed WAL write / flush this often (default 1000)
  idleTrimMs: number; // no I/O for this long: give the write buffer, cache and chunk buffers back (default 30000)
  seqReserveStep: number; // seqs reserved ahead in the map log per reservation, one synced write each (default 2^20)
  backendReadTimeoutMs: number; // a read that needs the backend fails with EIO (VBFS_IO) after this long (default 60000)
  backendRetryMs: number; // backend down: a failed flush is tried again after this long, doubling up to 30 s (default 1000)
  cryptoThreads: number; // encrypted volumes: a worker thread opens (decrypts) readahead runs off the event loop (default 1; 0: inline)
  cryptoBatchBlocks: number; // encrypted volumes: a run a read waits for is opened in the worker too from this many records (default 64)
  cryptoSealBlocks: number; // encrypted volumes, not strict: a write of this many blocks or more is sealed in the worker, acknowledged before (so are smaller ones while it has records); 0: always inline (default 8)
  // Compaction (store/compactor.ts): rewrites the live records of mostly-dead chunks into new ones.
  compactIntervalMs: number; // check whether to compact this often (default 5000; 0 = no background compaction, compact() still works)
  compactStartRatio: number; // start when stored bytes > live bytes x this (default 1.5)
  compactTargetRatio: number; // ... and go on until stored <= live x this (default 1.25)
  compactChunkLive: number; // also compact any chunk whose live fraction is below this (default 0.25)
  compactRateBytes: number; // bytes/s compaction reads + writes at most while foreground I/O runs, pausing also 4x each round's duration (default 32 MiB/s; 0 = no limit)
}

export interface VolumeOpenOptions extends Partial<VolumeTunables> {
  /** Override the durability chosen at create time, for this open only. */
  durability?: Durability;
  /** Open without the write lock: reads only; fails on write(). */
  readOnly?: boolean;
  /**
   * The key of an encrypted volume (also for a read-only open). Missing:
   * VBFS_KEY_REQUIRED; wrong: VBFS_BAD_KEY; given for a volume that is not
   * encrypted: VBFS_INVALID_ARGUMENT. Only derived keys are kept; `bytes` stays the caller's.
   */
  key?: KeyMaterial;
}

export interface VolumeStats {
  writes: number; // write() calls
  writeBytes: number;
  reads: number;
  readBytes: number;
  walWrites: number; // write(2) calls of WAL record batches (segment headers not counted)
  walSyncs: number; // fdatasyncs of the WAL
  walBytes: number;
  fsyncs: number; // fsync() calls on the volume
  fsyncP50Ms: number;
  fsyncP99Ms: number;
  chunkFlushes: number; // chunk objects written
  flushedBytes: number;
  pendingBytes: number; // Hot + Pending data not yet in chunks
  blocksHot: number; // blocks whose current version is in the write buffer, its WAL record not yet synced
  blocksPending: number; // ... in the write buffer and in a synced WAL record, not yet in a chunk
  blocksPersisted: number; // blocks whose current version is in a chunk object only
  blocksCached: number; // ... in a chunk object and in the read cache
  cacheHits: number;
  cacheMisses: number;
  cacheBytes: number;
  checkpoints: number;
  errors: number;
  corruptReads: number; // reads refused (EIO) because stored data failed its checksum or identity check
  trims: number; // trim() calls (library, or FUSE fallocate: fstrim, discard, blkdiscard)
  zeroBlocks: number; // blocks made Empty by a zero record (whole blocks trimmed, or written as all zeros)
  zeroBlocksUnflushed: number; // ... whose map tombstone the next flush commits
  seq: number; // last sequence number handed out
  seqReserved: number; // seqs up to this one are reserved durably in the map log (0 when read-only)
  seqReservations: number; // reservations written in the background since open (the one at open not counted)
  seqReserveWaits: number; // writes that had to wait for a reservation
  // The store's backend (shared by its volumes): 0 where it does not count them.
  backendRequests: number; // requests sent (S3: HTTP attempts, retries included)
  backendRetries: number; // retried attempts (5xx, SlowDown, timeout, reset)
  backendErrors: number; // backend operations that failed for good
  backendDown: number; // 1 while flushes fail because the backend does not answer (writes wait in the WAL)
  diskCacheHits: number; // backend reads served by the local disk chunk cache
  diskCacheMisses: number; // ... that had to go to the backend
  diskCacheBytes: number; // bytes the disk chunk cache holds
  // Space (store/compactor.ts): bytes of live records in chunks, bytes of the chunk objects holding them.
  liveBytes: number;
  storedBytes: number;
  spaceAmplification: number; // storedBytes / liveBytes (0 when nothing is stored)
  compacting: number; // 1 while a compaction runs
  compactProgress: number; // share of the running compaction's reclaimable bytes reclaimed so far (0..1; 0 when idle)
  compactRounds: number; // compaction rounds (one new chunk each) since open
  compactedChunks: number; // chunks emptied by compaction since open
  compactBytesMoved: number; // bytes of new chunks compaction wrote
  compactBytesReclaimed: number; // stored bytes compaction freed since open
}
