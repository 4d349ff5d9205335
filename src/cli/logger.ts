/**
 * winston set-up for the command line: human-readable lines on stderr, JSON lines
 * in --log-file. `closeLogger` waits until the file has everything, so nothing
 * logged just before exit is lost.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as winston from 'winston';
import { mkdirPrivateSync, openAppendPrivateSync } from '../io/private-mode';
import type { Logger } from '../types';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface CliLogger extends Logger {
  readonly level: LogLevel;
  readonly winston: winston.Logger;
}

export interface LoggerOptions {
  level: LogLevel;
  file?: string;
  /** Write human lines to stderr (off for a daemon whose stderr goes nowhere). */
  console?: boolean;
}

export function createCliLogger(opts: LoggerOptions): CliLogger {
  const transports: winston.transport[] = [];
  const fileLevel: LogLevel = opts.level === 'debug' ? 'debug' : 'info';
  if (opts.console !== false) {
    transports.push(
      new winston.transports.Console({
        level: opts.level,
        stderrLevels: [...LOG_LEVELS],
        format: winston.format.printf((info) => {
          const { level, message, stack, ...meta } = info as winston.Logform.TransformableInfo & { stack?: string };
          const prefix = level === 'info' ? 'vbfs: ' : `vbfs: ${level}: `;
          let text = `${prefix}${String(message)}`;
          if (opts.level === 'debug') {
            const rest = Object.keys(meta).filter((k) => typeof k === 'string');
            if (rest.length) text += ' ' + JSON.stringify(Object.fromEntries(rest.map((k) => [k, meta[k]])));
            if (stack) text += '\n' + stack;
          }
          return text;
        }),
      }),
    );
  }
  if (opts.file) {
    // Created private (0600, in a 0700 directory if we make it) before winston opens
    // it: a log names volumes, paths and errors. A failure is left for winston to report.
    try {
      mkdirPrivateSync(path.dirname(opts.file));
      fs.closeSync(openAppendPrivateSync(opts.file));
    } catch {
      // winston's own open says what is wrong
    }
    transports.push(
      new winston.transports.File({
        // A log file is read after the fact: keep at least the info events there
        // (mounted, volumes opened/closed, unmounted) whatever stderr shows.
        level: fileLevel,
        filename: opts.file,
        format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
      }),
    );
  }
  const w = winston.createLogger({
    level: opts.file ? fileLevel : opts.level,
    levels: { error: 0, warn: 1, info: 2, debug: 3 },
    transports,
    exitOnError: false,
  });
  // A transport that cannot write (full disk under the log file, a closed stderr)
  // loses lines; it must not throw into the mount process.
  w.on('error', () => undefined);
  const log = (level: LogLevel) => (msg: string, meta?: Record<string, unknown>) => {
    w.log(level, msg, meta ?? {});
  };
  return {
    level: opts.level,
    winston: w,
    error: log('error'),
    warn: log('warn'),
    info: log('info'),
    debug: log('debug'),
  };
}

/** End the logger and wait for every transport (the log file) to be written out. */
export function closeLogger(logger: CliLogger, timeoutMs = 5000): Promise<void> {
  const w = logger.winston;
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    const pending = w.transports.filter((t) => t instanceof winston.transports.File);
    if (pending.length === 0) {
      clearTimeout(timer);
      return resolve();
    }
    let left = pending.length;
    for (const t of pending) {
      t.once('finish', () => {
        if (--left === 0) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
    w.end();
  });
}
