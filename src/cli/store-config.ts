/**
 * `--backend`: where a store's volumes live, remembered in the store directory so
 * that later commands on it need no `--backend`.
 *
 * `<store>/store.json` (0600) holds the backend URL and, if it was given, the
 * path-style choice; never a credential: those come from the AWS SDK's standard
 * sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3
 * or AWS_ENDPOINT_URL, AWS_PROFILE with ~/.aws/config and credentials) every time.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { VbfsError } from '../errors';
import type { Backend } from '../backend/backend';
import { S3Backend, parseS3Url } from '../backend/s3-backend';
import { mkdirPrivate, writeNewPrivateFile } from '../io/private-mode';

export const STORE_CONFIG = 'store.json';

export interface BackendChoice {
  /** `--backend s3://BUCKET/PREFIX`, if given. */
  url?: string;
  /** `--s3-path-style[=false]`, if given. */
  pathStyle?: boolean;
}

export interface StoreConfig {
  backend: string;
  s3PathStyle?: boolean;
}

/** The canonical spelling of a backend URL (`s3://b/p/` and `s3://b/p` are one backend). */
export function canonicalBackend(url: string): string {
  const { bucket, prefix } = parseS3Url(url);
  return `s3://${bucket}/${prefix}`;
}

export async function readStoreConfig(storeDir: string): Promise<StoreConfig | null> {
  const file = path.join(storeDir, STORE_CONFIG);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw new VbfsError('VBFS_IO', `cannot read ${file}: ${(err as Error).message}`, { path: file });
  }
  try {
    const c = JSON.parse(text) as Partial<StoreConfig>;
    if (typeof c.backend !== 'string') throw new Error('no backend');
    if (c.s3PathStyle !== undefined && typeof c.s3PathStyle !== 'boolean') throw new Error('bad s3PathStyle');
    return { backend: canonicalBackend(c.backend), s3PathStyle: c.s3PathStyle };
  } catch (err) {
    throw new VbfsError('VBFS_CORRUPT', `${file} is damaged (${(err as Error).message})`, { path: file });
  }
}

async function writeStoreConfig(storeDir: string, config: StoreConfig): Promise<void> {
  await mkdirPrivate(storeDir);
  const file = path.join(storeDir, STORE_CONFIG);
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.unlink(tmp).catch(() => undefined);
  await writeNewPrivateFile(tmp, JSON.stringify(config) + '\n');
  await fsp.rename(tmp, file);
}

/** Does the directory hold volumes kept in the local directory (a store made without --backend)? */
async function hasLocalVolumes(storeDir: string): Promise<boolean> {
  const names = await fsp.readdir(path.join(storeDir, 'volumes')).catch(() => [] as string[]);
  for (const n of names) {
    if (n.startsWith('.')) continue;
    if (await fsp.stat(path.join(storeDir, 'volumes', n, 'volume.json')).catch(() => null)) return true;
  }
  return false;
}

/**
 * The store's backend: the remembered one, or `--backend` (then remembered). A
 * `--backend` that names another backend than the remembered one, or one given for a
 * store whose volumes are in its local directory, is refused (VBFS_INVALID_ARGUMENT):
 * mixing them would hide volumes. Null: the local directory (no S3).
 */
export async function resolveBackendConfig(storeDir: string, choice: BackendChoice): Promise<StoreConfig | null> {
  const remembered = await readStoreConfig(storeDir);
  if (choice.url === undefined) {
    if (remembered && choice.pathStyle !== undefined && choice.pathStyle !== remembered.s3PathStyle) {
      const next = { ...remembered, s3PathStyle: choice.pathStyle };
      await writeStoreConfig(storeDir, next);
      return next;
    }
    return remembered;
  }
  const wanted = canonicalBackend(choice.url);
  if (remembered && remembered.backend !== wanted) {
    throw new VbfsError(
      'VBFS_INVALID_ARGUMENT',
      `store ${storeDir} uses the backend ${remembered.backend}, not ${wanted} (drop --backend, or use another --store)`,
      { remembered: remembered.backend, given: wanted },
    );
  }
  if (!remembered && (await hasLocalVolumes(storeDir))) {
    throw new VbfsError(
      'VBFS_INVALID_ARGUMENT',
      `store ${storeDir} keeps its volumes in the local directory; --backend ${wanted} needs a new (empty) store directory`,
      { remembered: 'local', given: wanted },
    );
  }
  const next: StoreConfig = { backend: wanted };
  const pathStyle = choice.pathStyle ?? remembered?.s3PathStyle;
  if (pathStyle !== undefined) next.s3PathStyle = pathStyle;
  if (!remembered || remembered.s3PathStyle !== next.s3PathStyle) await writeStoreConfig(storeDir, next);
  return next;
}

/** The S3 backend a config names; endpoint, region and credentials from the environment (AWS SDK). */
export function backendFor(config: StoreConfig): Backend & S3Backend {
  const { bucket, prefix } = parseS3Url(config.backend);
  return new S3Backend({ bucket, prefix, forcePathStyle: config.s3PathStyle });
}
