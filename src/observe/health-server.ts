import { createServer, type Server } from 'node:http';
import { serveHealth, type HealthOptions } from './health.ts';

/** how long a scraper or a probe may take to send its request */
const REQUEST_TIMEOUT_MS = 10_000;

/**
 * A port of its own for /livez, /readyz and /metrics, apart from the ports that carry traffic, so that a
 * NetworkPolicy can fence the metrics without fencing the agents.
 */
export class HealthServer {
  #server: Server;

  constructor(health: HealthOptions) {
    this.#server = createServer((req, res) => {
      if (serveHealth(req, res, health)) return;
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('404 page not found\n');
    });
    this.#server.headersTimeout = REQUEST_TIMEOUT_MS;
    this.#server.requestTimeout = REQUEST_TIMEOUT_MS;
  }

  /** resolves with the port it got */
  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => resolve((this.#server.address() as { port: number }).port));
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
