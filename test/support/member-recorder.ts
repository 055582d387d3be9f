import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { stringify } from 'yaml';
import { CertificateAuthority } from '../../src/pki/ca.ts';

/** which of the member's two servers a request reached */
export type MemberServer = 'kube-apiserver' | 'ks-apiserver';

/** One request as it arrived at the member's side of the wire. */
export interface Arrival {
  server: MemberServer;
  method: string;
  /** the request target as sent (path and query) */
  url: string;
  /** the `probe` query parameter, which the test puts on each request to tell them apart */
  probe: string | undefined;
  authorization: string | undefined;
  /** every Impersonate-* header, each value as it arrived */
  impersonate: Record<string, string[]>;
  /** names of X-Tower-* headers that arrived: tower's own, never meant for a member */
  towerHeaders: string[];
  /** a SubjectAccessReview tower asked (kube-apiserver only): for whom */
  review?: { user: string; groups: string[]; attributes: Record<string, string> };
}

const BODY_LIMIT_BYTES = 64 * 1024;

/**
 * A member cluster whose two servers record what reaches them: an HTTPS "kube-apiserver" that
 * accepts the agent's bearer token (and denies every impersonation tower asks about) and a
 * plain-HTTP "ks-apiserver". Both answer JSON naming which server answered, so that a client can
 * tell as well. The test asserts on `arrivals`, the far side of the wire.
 */
export class MemberRecorder {
  readonly arrivals: Arrival[] = [];
  /** the agent's credential: kube-apiserver answers 401 without it */
  readonly token = 'member-agent-token-' + Math.random().toString(36).slice(2);
  caPem = '';
  kubePort = 0;
  ksPort = 0;
  #kube: Server;
  #ks: Server;

  private constructor(kube: Server, ks: Server) {
    this.#kube = kube;
    this.#ks = ks;
  }

  static async start(): Promise<MemberRecorder> {
    const caPair = await CertificateAuthority.create('member-recorder-ca');
    const ca = await CertificateAuthority.load(caPair, 'member-recorder');
    const serving = await ca.issueServer(['127.0.0.1', 'localhost']);
    const kube = createHttpsServer({ cert: serving.cert, key: serving.key });
    const ks = createHttpServer();
    const r = new MemberRecorder(kube, ks);
    r.caPem = caPair.cert;
    kube.on('request', (req, res) => r.#onKube(req, res));
    ks.on('request', (req, res) => r.#onKs(req, res));
    // an upgrade is recorded like any request, then refused: nothing here speaks a streaming protocol
    for (const [server, s] of [['kube-apiserver', kube], ['ks-apiserver', ks]] as const) {
      s.on('upgrade', (req: IncomingMessage, socket) => {
        r.#record(server, req);
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      });
    }
    r.kubePort = await listen(kube);
    r.ksPort = await listen(ks);
    return r;
  }

  get kubeHostPort(): string { return `127.0.0.1:${this.kubePort}`; }
  get ksHostPort(): string { return `127.0.0.1:${this.ksPort}`; }

  /** what reached either server for one probe */
  of(probe: string): Arrival[] {
    return this.arrivals.filter((a) => a.probe === probe);
  }

  /** The agent's kubeconfig: this kube-apiserver, with a bearer token (as a ServiceAccount's). */
  writeKubeconfig(path: string): string {
    writeFileSync(path, stringify({
      apiVersion: 'v1', kind: 'Config',
      clusters: [{ name: 'member', cluster: { server: `https://${this.kubeHostPort}`, 'certificate-authority-data': Buffer.from(this.caPem).toString('base64') } }],
      users: [{ name: 'tower-agent', user: { token: this.token } }],
      contexts: [{ name: 'member', context: { cluster: 'member', user: 'tower-agent' } }],
      'current-context': 'member',
    }), { mode: 0o600 });
    return path;
  }

  close(): Promise<void> {
    const closed = [this.#kube, this.#ks].map((s) => new Promise<void>((resolve) => { s.close(() => resolve()); s.closeAllConnections(); }));
    return Promise.all(closed).then(() => undefined);
  }

  #record(server: MemberServer, req: IncomingMessage): Arrival {
    const url = req.url ?? '';
    let probe: string | undefined;
    try { probe = new URL(url, 'http://member').searchParams.get('probe') ?? undefined; } catch { probe = undefined; }
    const impersonate: Record<string, string[]> = {};
    for (const [k, v] of Object.entries(req.headersDistinct)) if (k.startsWith('impersonate-') && v) impersonate[k] = v;
    const a: Arrival = {
      server, method: req.method ?? '', url, probe,
      authorization: req.headers.authorization,
      impersonate,
      towerHeaders: Object.keys(req.headers).filter((k) => k.startsWith('x-tower-')),
    };
    this.arrivals.push(a);
    return a;
  }

  #onKube(req: IncomingMessage, res: ServerResponse): void {
    const a = this.#record('kube-apiserver', req);
    if (req.headers.authorization !== `Bearer ${this.token}`) { req.resume(); json(res, 401, { server: 'kube-apiserver', kind: 'Status', code: 401, message: 'Unauthorized' }); return; }
    if (req.method === 'POST' && a.url.split('?')[0] === '/apis/authorization.k8s.io/v1/subjectaccessreviews') {
      readBody(req, (body) => {
        let review: { spec?: { user?: string; groups?: string[]; resourceAttributes?: Record<string, string> } } = {};
        try { review = JSON.parse(body); } catch { /* recorded as an empty review */ }
        a.review = { user: review.spec?.user ?? '', groups: review.spec?.groups ?? [], attributes: review.spec?.resourceAttributes ?? {} };
        // no one may impersonate here: a client's own Impersonate-* must never be honoured
        json(res, 201, { ...review, status: { allowed: false, reason: 'member-recorder allows no impersonation' } });
      });
      return;
    }
    readBody(req, () => json(res, req.method === 'POST' ? 201 : 200, answer('kube-apiserver', req, a)));
  }

  #onKs(req: IncomingMessage, res: ServerResponse): void {
    const a = this.#record('ks-apiserver', req);
    readBody(req, () => json(res, req.method === 'POST' ? 201 : 200, answer('ks-apiserver', req, a)));
  }
}

function answer(server: MemberServer, req: IncomingMessage, a: Arrival) {
  return { server, method: req.method, url: a.url, impersonateUser: a.impersonate['impersonate-user'] ?? null };
}

/** reads (and bounds) a request body, so that a kept-alive connection is ready for the next request */
function readBody(req: IncomingMessage, then: (body: string) => void): void {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (d: string) => { if (body.length < BODY_LIMIT_BYTES) body += d; });
  req.on('end', () => then(body));
  req.on('error', () => undefined);
}

function json(res: ServerResponse, code: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function listen(s: Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
}
