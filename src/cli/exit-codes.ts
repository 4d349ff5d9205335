/**
 * The one table from errors to exit statuses: 0 success, 2 usage (the command line
 * itself is wrong: fix the arguments), 1 failure (the request was fine but could not
 * be done).
 */
import { isVbfsError, type VbfsErrorCode } from '../errors';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** A bad command line: unknown option, missing argument, unparsable size ... */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A failure whose exit status was decided elsewhere (e.g. by the daemon child). */
export class ExitError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'ExitError';
  }
}

export const EXIT_BY_CODE: Readonly<Record<VbfsErrorCode, number>> = {
  VBFS_INVALID_ARGUMENT: EXIT_USAGE, // a value the user typed (size, block size ...) is invalid
  VBFS_INVALID_NAME: EXIT_USAGE, // '../x' is never a volume name
  VBFS_OUT_OF_RANGE: EXIT_USAGE,
  VBFS_NOT_FOUND: EXIT_FAILURE,
  VBFS_EXISTS: EXIT_FAILURE,
  VBFS_LOCKED: EXIT_FAILURE,
  VBFS_CLOSED: EXIT_FAILURE,
  VBFS_READ_ONLY: EXIT_FAILURE,
  VBFS_CORRUPT: EXIT_FAILURE,
  VBFS_UNSUPPORTED_VERSION: EXIT_FAILURE,
  VBFS_BUSY: EXIT_FAILURE,
  VBFS_BAD_KEY: EXIT_FAILURE,
  VBFS_LEASE_HELD: EXIT_FAILURE,
  VBFS_LEASE_LOST: EXIT_FAILURE,
  VBFS_KEY_REQUIRED: EXIT_USAGE, // the command line lacks --key-file / --key-env
  VBFS_IO: EXIT_FAILURE,
};

export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return EXIT_USAGE;
  if (err instanceof ExitError) return err.exitCode;
  if (isVbfsError(err)) return EXIT_BY_CODE[err.code];
  return EXIT_FAILURE;
}
