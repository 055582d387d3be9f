/**
 * What a replica answers the others, on its gateway under /peer/v1/ (their certificates name
 * them; the gateway checks that): GET sessions?cluster=… — how many agents of each it holds;
 * POST changed — another replica's agents of these clusters came or went.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PEER_API } from './peer-protocol.ts';

const MAX_PEER_BODY_BYTES = 256 * 1024;
const MAX_CLUSTERS_ASKED = 1000;

export interface PeerApiOptions {
  serverId: string;
  draining: () => boolean;
  /** agents of `name` on this replica */
  sessions: (name: string) => number;
  /** another replica's agents of `name` changed */
  changed: (name: string) => void;
}

export function peerApi(opts: PeerApiOptions): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'https://peer');
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && url.pathname === `${PEER_API}sessions`) {
      const sessions: Record<string, number> = {};
      for (const name of url.searchParams.getAll('cluster').slice(0, MAX_CLUSTERS_ASKED))
        sessions[name] = opts.sessions(name);
      json(200, { server: opts.serverId, draining: opts.draining(), sessions });
      return;
    }
    if (req.method === 'POST' && url.pathname === `${PEER_API}changed`) {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (d: string) => {
        body += d;
        if (body.length > MAX_PEER_BODY_BYTES) req.destroy();
      });
      req.on('end', () => {
        let names: unknown;
        try {
          names = (JSON.parse(body) as { clusters?: unknown }).clusters;
        } catch {
          names = undefined;
        }
        if (!Array.isArray(names)) {
          json(400, { error: 'want {"clusters": [names]}' });
          return;
        }
        for (const n of names) if (typeof n === 'string') opts.changed(n);
        res.writeHead(204).end();
      });
      return;
    }
    json(404, { error: `no ${req.method} ${url.pathname}` });
  };
}
