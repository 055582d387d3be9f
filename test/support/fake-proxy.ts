import { AgentEndpoint } from '../../src/proxy/agent-endpoint.ts';
import { Logger } from '../../src/observe/log.ts';
import { TunnelServer, type AgentSession } from '../../src/tunnel/server.ts';
import { generateHostKey, hostKeyFingerprint } from '../../src/tunnel/ssh.ts';

/** agents that never connect fail the test instead of hanging it */
const SESSION_WAIT_MS = 20_000;

/**
 * A proxy that the test drives by hand: tower's own agent port (WebSocket, SSH, `config`, the
 * features a tower proxy offers in its 101), which admits any agent and then does nothing by
 * itself. The test opens channels through `session(name)` and writes into them whatever it likes:
 * a proxy gone hostile, or a framing bug in the real one.
 */
export class FakeProxy {
  readonly fingerprint: string;
  port = 0;
  #endpoint: AgentEndpoint;
  #sessions = new Map<string, AgentSession>();
  #waiters = new Set<() => void>();

  private constructor() {
    const hostKey = generateHostKey();
    this.fingerprint = hostKeyFingerprint(hostKey);
    this.#endpoint = new AgentEndpoint({
      tunnel: new TunnelServer(hostKey),
      // the token is whatever the agent says: this proxy is the one under suspicion, not the agent
      authorize: async () => undefined,
      onSession: (s) => {
        this.#sessions.set(s.name, s);
        s.once('close', () => {
          if (this.#sessions.get(s.name) === s) this.#sessions.delete(s.name);
        });
        for (const w of this.#waiters) w();
      },
      health: { live: [], ready: [] },
      serverId: 'fake-proxy',
      log: new Logger({ verbosity: -1, format: 'text' }),
    });
  }

  static async start(): Promise<FakeProxy> {
    const p = new FakeProxy();
    p.port = await p.#endpoint.listen(0, '127.0.0.1');
    return p;
  }

  /** the --proxy-server an agent dials */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The admitted session of the agent named `name` (its --name), once it has connected. */
  session(name: string): Promise<AgentSession> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const s = this.#sessions.get(name);
        if (!s) return false;
        done();
        resolve(s);
        return true;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`agent "${name}" did not connect to the fake proxy within ${SESSION_WAIT_MS} ms`));
      }, SESSION_WAIT_MS);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      if (!check()) this.#waiters.add(check);
    });
  }

  async close(): Promise<void> {
    for (const s of this.#sessions.values()) s.close();
    await this.#endpoint.close();
  }
}
