/**
 * A fault-injecting HTTP proxy for the S3 tests: the client talks to the proxy, the
 * proxy forwards each request unchanged (Host header included, so SigV4 signatures
 * stay valid) to the real endpoint, unless a fault is queued or an outage is on.
 *
 *   const proxy = await FaultProxy.start('http://127.0.0.1:PORT');
 *   proxy.next('503', 3);          // the next 3 requests get 503 SlowDown
 *   proxy.next('reset');           // the next request's connection is reset (RST)
 *   proxy.next('resetAfterUpstream'); // forwarded, answered, then the client sees a reset
 *   proxy.next('500AfterUpstream');   // forwarded, answered, the client gets a 500
 *   proxy.next('delay', 1, 2000);  // forwarded after 2 s
 *   proxy.delayWhere = (req) => (req.method === 'PUT' ? 2000 : 0); // every PUT forwarded after 2 s
 *   proxy.faultWhere = (req) => (req.url?.includes('-end') ? '500AfterUpstream' : null); // every such request, retries too
 *   proxy.outage = 'blackhole';    // every request hangs without an answer
 *   proxy.outage = '503' | 'reset' | null;
 *
 * Counters say what happened: requests seen, forwarded, faulted.
 */
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault = '503' | '500' | 'reset' | 'resetAfterUpstream' | '500AfterUpstream' | 'delay' | 'blackhole';

export class FaultProxy {
  /** Applies to every request while set (after queued faults run out). */
  outage: Exclude<Fault, 'delay' | 'resetAfterUpstream' | '500AfterUpstream'> | null = null;
  readonly counts = { requests: 0, forwarded: 0, faulted: 0 };
  /** While set: each request it gives a positive delay for (and no queued fault or outage hits) is forwarded after that many ms. */
  delayWhere: ((req: http.IncomingMessage) => number) | null = null;
  /** While set: each request it names a fault for (and no queued fault hits) gets that fault, before any outage. */
  faultWhere: ((req: http.IncomingMessage) => Exclude<Fault, 'delay'> | null) | null = null;
  private readonly queue: { fault: Fault; delayMs: number }[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly target: URL;
  private readonly agent = new http.Agent({ keepAlive: true });

  private constructor(
    private readonly server: http.Server,
    target: string,
  ) {
    this.target = new URL(target);
  }

  static async start(target: string): Promise<FaultProxy> {
    const server = http.createServer();
    const proxy = new FaultProxy(server, target);
    server.on('request', (req, res) => proxy.handle(req, res));
    server.on('connection', (s: Socket) => {
      proxy.sockets.add(s);
      s.on('close', () => proxy.sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Queue `fault` for the next `times` requests. */
  next(fault: Fault, times = 1, delayMs = 0): void {
    for (let i = 0; i < times; i++) this.queue.push({ fault, delayMs });
  }

  async close(): Promise<void> {
    this.queue.length = 0;
    this.outage = null;
    for (const s of this.sockets) s.destroy();
    this.agent.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.counts.requests++;
    const queued = this.queue.shift();
    const fault = queued?.fault ?? this.faultWhere?.(req) ?? this.outage;
    if (fault === null || fault === undefined) {
      const delayMs = this.delayWhere?.(req) ?? 0;
      if (delayMs > 0) {
        this.counts.faulted++;
        setTimeout(() => this.forward(req, res, 'pass'), delayMs);
        return;
      }
      return this.forward(req, res, 'pass');
    }
    this.counts.faulted++;
    switch (fault) {
      case '503':
        return this.answer(req, res, 503, 'SlowDown', 'Please reduce your request rate.');
      case '500':
        return this.answer(req, res, 500, 'InternalError', 'We encountered an internal error. Please try again.');
      case 'reset':
        req.socket.resetAndDestroy();
        return;
      case 'blackhole':
        req.resume(); // read the body, never answer
        return;
      case 'delay':
        setTimeout(() => this.forward(req, res, 'pass'), queued?.delayMs ?? 0);
        return;
      case 'resetAfterUpstream':
        return this.forward(req, res, 'reset');
      case '500AfterUpstream':
        return this.forward(req, res, '500');
    }
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse, status: number, code: string, message: string): void {
    const send = (): void => {
      const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`;
      res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    // Drain the request body first, or the client may see a reset instead of the answer.
    if (req.readableEnded) return send();
    req.resume();
    req.on('end', send);
  }

  /** `then`: pass the answer on, or drop it and reset / answer 500 instead. */
  private forward(req: http.IncomingMessage, res: http.ServerResponse, then: 'pass' | 'reset' | '500'): void {
    const headers = { ...req.headers };
    // Node's server already answered the 100-continue; the upstream need not.
    delete headers['expect'];
    const up = http.request({ host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers, agent: this.agent }, (upRes) => {
      if (then !== 'pass') {
        // The request took effect upstream; the client never learns the outcome.
        upRes.resume();
        upRes.on('end', () => {
          if (then === 'reset') req.socket.resetAndDestroy();
          else this.answer(req, res, 500, 'InternalError', 'We encountered an internal error. Please try again.');
        });
        return;
      }
      this.counts.forwarded++;
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => req.socket.resetAndDestroy());
    req.pipe(up);
  }
}
