import type { IncomingMessage, ServerResponse } from 'node:http';

/** One named check of /livez or /readyz: undefined when it passes, else why not. */
export interface HealthCheck {
  name: string;
  check: () => string | undefined;
}

export interface HealthOptions {
  live: HealthCheck[];
  ready: HealthCheck[];
  /** Prometheus text for /metrics */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /** more GET paths answered as plain text (the Go tower's /health and /version) */
  extra?: Record<string, () => string>;
}

/**
 * /livez, /readyz and /metrics as Kubernetes components answer them: `ok`, or with `?verbose` a
 * `[+]name ok` / `[-]name failed: why` line per check; 200 when all pass, else 500.
 * Returns false for a path it does not serve.
 */
export function serveHealth(req: IncomingMessage, res: ServerResponse, opts: HealthOptions): boolean {
  const [path = '', query = ''] = (req.url ?? '').split('?', 2);
  if (req.method !== 'GET' && req.method !== 'HEAD') return false;
  const text = (code: number, body: string) => {
    res.writeHead(code, {
      'content-type': 'text/plain; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
    });
    res.end(body);
  };
  if (path === '/livez' || path === '/readyz') {
    const kind = path.slice(1);
    const checks = path === '/livez' ? opts.live : opts.ready;
    const verbose = /(^|&)verbose(=|&|$)/.test(query);
    const results = checks.map((c) => ({ name: c.name, problem: c.check() }));
    const failed = results.filter((r) => r.problem !== undefined);
    if (!verbose && failed.length === 0) {
      text(200, 'ok');
      return true;
    }
    const lines = results.map((r) =>
      r.problem === undefined ? `[+]${r.name} ok` : `[-]${r.name} failed: ${r.problem}`,
    );
    lines.push(failed.length === 0 ? `${kind} check passed` : `${kind} check failed`);
    text(failed.length === 0 ? 200 : 500, lines.join('\n') + '\n');
    return true;
  }
  if (path === '/metrics' && opts.metrics) {
    opts.metrics().then(
      ({ contentType, body }) => {
        res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' });
        res.end(body);
      },
      (err: Error) => text(500, `cannot collect metrics: ${err.message}\n`),
    );
    return true;
  }
  const extra = opts.extra?.[path];
  if (extra) {
    text(200, extra());
    return true;
  }
  return false;
}

/** how long one rendering of /metrics answers every scrape */
export const METRICS_CACHE_MS = 1000;

/**
 * `render`, at most once per METRICS_CACHE_MS: the endpoint answers strangers too, and a proxy
 * with 1 000 clusters takes ~36 ms to render, so a client asking in a loop would otherwise cost a
 * core; now it costs one rendering a second, whatever it asks.
 */
export function cachedMetrics(
  render: () => Promise<{ contentType: string; body: string }>,
): () => Promise<{ contentType: string; body: string }> {
  let last: { at: number; result: Promise<{ contentType: string; body: string }> } | undefined;
  return () => {
    const now = performance.now();
    if (!last || now - last.at >= METRICS_CACHE_MS) {
      const result = render();
      last = { at: now, result };
      // a failed rendering is not kept
      result.catch(() => {
        if (last?.result === result) last = undefined;
      });
    }
    return last.result;
  };
}

/**
 * How often prom-client samples the event loop's delay: its default (10 ms) wakes an idle process
 * 100 times a second, which took an idle proxy from 0.1% to 0.4% of a core; at 100 ms the lag
 * figures keep their magnitude.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

/**
 * prom-client's default metrics include three gauges named *_total (nodejs_active_handles_total, …),
 * which `promtool check metrics` rejects; the same counts stay as nodejs_active_handles{type}.
 */
export function withoutTotalGauges(register: { removeSingleMetric(name: string): void }): void {
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'])
    register.removeSingleMetric(name);
}
