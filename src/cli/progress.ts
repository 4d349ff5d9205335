/** Progress display for long CLI work (fsck, compact): one line on a terminal, redrawn in place. */

export interface ProgressBar<P> {
  update: (p: P) => void;
  clear: () => void;
}

const WIDTH = 30;

/**
 * A one-line bar redrawn at most every 100 ms (and always when `render` says the
 * work is done, so the last state is not skipped). `render` gives the label, the
 * fraction done (0..1) and the text after the bar.
 */
export function progressBar<P>(
  write: (text: string) => void,
  render: (p: P) => { label: string; fraction: number; text: string; done?: boolean },
): ProgressBar<P> {
  let last = 0;
  let shown = false;
  return {
    update: (p) => {
      const r = render(p);
      const now = Date.now();
      if (now - last < 100 && !r.done) return;
      last = now;
      const fill = Math.round(Math.min(1, Math.max(0, r.fraction)) * WIDTH);
      write(`\r${r.label} [${'#'.repeat(fill)}${'.'.repeat(WIDTH - fill)}] ${r.text}\x1b[K`);
      shown = true;
    },
    clear: () => {
      if (shown) write('\r\x1b[K');
      shown = false;
    },
  };
}
