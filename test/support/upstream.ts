import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer, type WebSocket } from 'ws';
import { issueApiserverPki, writeAgentKubeconfig, type ApiserverPki } from './apiserver-pki.ts';

const EXEC_PROTOCOL = 'v5.channel.k8s.io';
const STDIN = 0;
const STDOUT = 1;
const ERROR = 3;
const CLOSE = 255;
const POD = 'echo';

/**
 * A stand-in kube-apiserver for what needs a kubelet: HTTPS with client-certificate and bearer
 * auth, a Running pod "echo" in "default" whose exec (kubectl's WebSocket protocol
 * v5.channel.k8s.io) echoes stdin to stdout and exits with the status named by its command
 * (`kubectl exec echo -i -- exit 3`), and bulk endpoints for streaming tests.
 */
export class TestUpstream {
  readonly server: Server;
  readonly token = 'test-upstream-token-' + Math.random().toString(36).slice(2);
  /** bearer tokens accepted besides `token` (a rotated service-account token, say) */
  readonly extraTokens = new Set<string>();
  /** the bearer token of the last request that used one */
  lastToken = '';
  port = 0;
  readonly #pki: ApiserverPki;
  /** how each request authenticated, in order */
  readonly auth: string[] = [];
  /** the headers of every request (SubjectAccessReviews apart), in order */
  readonly requests: { path: string; headers: IncomingMessage['headers'] }[] = [];
  /** answers SubjectAccessReviews for impersonation: "<user> <resource> <name>" entries are allowed */
  readonly impersonation = new Set<string>();
  /** the SubjectAccessReviews asked, as "<user> <resource> <name>" */
  readonly reviews: string[] = [];
  /** every upgrade request (exec) that arrived, in order */
  readonly upgrades: { target: string; headers: IncomingMessage['headers'] }[] = [];
  /** when set, an exec is answered 101 (v5.channel.k8s.io) and then these bytes, which are not that protocol */
  execGarbage: Buffer | undefined;
  #wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (p) => (p.has(EXEC_PROTOCOL) ? EXEC_PROTOCOL : false),
  });

  private constructor(server: Server, pki: ApiserverPki) {
    this.server = server;
    this.#pki = pki;
  }

  static async start(): Promise<TestUpstream> {
    const pki = await issueApiserverPki('test-upstream', { user: 'agent', groups: ['system:masters'] });
    const server = createServer({ ...pki.serving, ca: pki.caPem, requestCert: true, rejectUnauthorized: false });
    const u = new TestUpstream(server, pki);
    server.on('request', (req, res) => u.#onRequest(req, res));
    server.on('upgrade', (req, socket, head) => {
      if (!u.#authenticate(req)) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
        return;
      }
      u.upgrades.push({ target: req.url ?? '', headers: req.headers });
      if (u.execGarbage) {
        socket.write(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: ${EXEC_PROTOCOL}\r\n\r\n`,
        );
        socket.end(u.execGarbage);
        return;
      }
      u.#wss.handleUpgrade(req, socket, head, (ws) => u.#exec(req, ws));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    u.port = (server.address() as { port: number }).port;
    return u;
  }

  get hostPort(): string {
    return `127.0.0.1:${this.port}`;
  }
  get caPem(): string {
    return this.#pki.caPem;
  }

  /** A kubeconfig for the agent: client certificate or bearer token. */
  writeKubeconfig(path: string, how: 'cert' | 'token'): string {
    return writeAgentKubeconfig(
      path,
      `https://${this.hostPort}`,
      this.#pki,
      how === 'cert' ? 'cert' : { token: this.token },
    );
  }

  close(): Promise<void> {
    for (const ws of this.#wss.clients) ws.terminate();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  #authenticate(req: IncomingMessage): boolean {
    const socket = req.socket as TLSSocket;
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (bearer && (bearer === this.token || this.extraTokens.has(bearer))) {
      this.auth.push('token');
      this.lastToken = bearer;
      return true;
    }
    if (socket.authorized) {
      this.auth.push('cert');
      return true;
    }
    this.auth.push('none');
    return false;
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (!this.#authenticate(req)) return json(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
    const url = requestUrl(req);
    // as Go's net/http answers a request target it cannot parse (the gateway's fuzz sends such paths)
    if (!url) return json(res, 400, status(400, 'BadRequest', 'malformed request path'));
    const p = url.pathname;
    if (p === '/apis/authorization.k8s.io/v1/subjectaccessreviews' && req.method === 'POST') {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => {
        body += d;
      });
      req.on('end', () => {
        const review = JSON.parse(body) as {
          spec: { user: string; resourceAttributes: { resource: string; name: string } };
        };
        const key =
          `${review.spec.user} ${review.spec.resourceAttributes.resource} ` + `${review.spec.resourceAttributes.name}`;
        this.reviews.push(key);
        json(res, 201, { ...review, status: { allowed: this.impersonation.has(key) } });
      });
      return;
    }
    this.requests.push({ path: p, headers: req.headers });
    if (p === '/slow') {
      const t = setTimeout(() => json(res, 200, { slow: true }), Number(url.searchParams.get('ms') ?? '1000'));
      res.on('close', () => clearTimeout(t));
      return;
    }
    if (p === '/api')
      return json(res, 200, {
        kind: 'APIVersions',
        versions: ['v1'],
        serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: this.hostPort }],
      });
    if (p === '/api/v1') {
      return json(res, 200, {
        kind: 'APIResourceList',
        groupVersion: 'v1',
        resources: [
          {
            name: 'pods',
            singularName: 'pod',
            namespaced: true,
            kind: 'Pod',
            verbs: ['get', 'list'],
            shortNames: ['po'],
          },
          { name: 'pods/exec', singularName: '', namespaced: true, kind: 'PodExecOptions', verbs: ['create', 'get'] },
        ],
      });
    }
    if (p === '/apis') return json(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
    if (p === `/api/v1/namespaces/default/pods/${POD}`) return json(res, 200, pod());
    if (p === '/upload' && req.method === 'POST') {
      let bytes = 0;
      req.on('data', (d: Buffer) => {
        bytes += d.length;
      });
      req.on('end', () => json(res, 200, { bytes }));
      return;
    }
    if (p === '/download') {
      const total = Number(url.searchParams.get('bytes') ?? '0');
      const chunk = Buffer.alloc(64 * 1024, 7);
      let sent = 0;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
      const pump = () => {
        while (sent < total) {
          const n = Math.min(chunk.length, total - sent);
          sent += n;
          if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            res.once('drain', pump);
            return;
          }
        }
        res.end();
      };
      pump();
      return;
    }
    json(res, 404, status(404, 'NotFound', `no ${p} here`));
  }

  /** remotecommand over WebSocket, protocol v5: byte 0 of each message is the stream. */
  #exec(req: IncomingMessage, ws: WebSocket): void {
    const url = requestUrl(req);
    if (!url) {
      ws.close(1002, 'malformed request path');
      return;
    }
    const command = url.searchParams.getAll('command');
    const exitCode = command[0] === 'exit' ? Number(command[1] ?? 0) : 0;
    const finish = () => {
      const st =
        exitCode === 0
          ? { metadata: {}, status: 'Success' }
          : {
              metadata: {},
              status: 'Failure',
              message: `command terminated with non-zero exit code: ${exitCode}`,
              reason: 'NonZeroExitCode',
              details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
            };
      ws.send(Buffer.concat([Buffer.from([ERROR]), Buffer.from(JSON.stringify(st))]));
      ws.close(1000);
    };
    ws.on('message', (data: Buffer) => {
      if (data.length === 0) return;
      if (data[0] === STDIN && data.length > 1) ws.send(Buffer.concat([Buffer.from([STDOUT]), data.subarray(1)]));
      else if (data[0] === CLOSE && data[1] === STDIN) finish();
    });
    if (url.searchParams.get('stdin') !== 'true') finish();
  }
}

function pod() {
  return {
    kind: 'Pod',
    apiVersion: 'v1',
    metadata: { name: POD, namespace: 'default', uid: '00000000-0000-0000-0000-000000000001', resourceVersion: '1' },
    spec: { containers: [{ name: 'main', image: 'echo' }] },
    status: {
      phase: 'Running',
      containerStatuses: [
        { name: 'main', ready: true, restartCount: 0, image: 'echo', imageID: '', state: { running: {} } },
      ],
    },
  };
}

function status(code: number, reason: string, message: string) {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason, message, code };
}

function json(res: ServerResponse, code: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s) });
  res.end(s);
}

function requestUrl(req: IncomingMessage): URL | undefined {
  try {
    return new URL(req.url ?? '/', 'https://upstream');
  } catch {
    return undefined;
  }
}
