/**
 * Which agents the proxy takes: a known, usable cluster and its current token (compared in
 * constant time), checked at the `config` request and again once the session is up (the token may
 * have rotated meanwhile). An admitted session joins the registry and learns the replicas.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Logger } from '../observe/log.ts';
import type { Cluster } from '../mode/mode.ts';
import { clusterNameProblem } from '../config/names.ts';
import { FEATURE_TLS_AT_AGENT, UNAUTHORIZED, type AgentConfig, type ReplicaView } from '../tunnel/protocol.ts';
import type { AgentSession } from '../tunnel/server.ts';
import type { ProxyMetrics } from './metrics.ts';
import type { SessionRegistry } from './registry.ts';

export interface AgentAdmissionOptions {
  clusters: { get(name: string): Cluster | undefined };
  registry: SessionRegistry;
  metrics: ProxyMetrics;
  /** the SSH window of a session's channels, asked at each channel's open */
  channelWindow: () => number;
  /** what agents are told of the replicas */
  view: () => ReplicaView;
  log: Logger;
}

export class AgentAdmission {
  #opts: AgentAdmissionOptions;
  constructor(opts: AgentAdmissionOptions) {
    this.#opts = opts;
  }

  /** undefined when the agent's `config` admits it; else the failure text it gets (the Go tower's). */
  authorize(config: AgentConfig, remote: string): string | undefined {
    const { log, metrics } = this.#opts;
    const problem = clusterNameProblem(config.name);
    const cluster = problem ? undefined : this.#opts.clusters.get(config.name);
    if (!cluster) {
      log.warn('agent refused: unknown cluster', {
        cluster: config.name,
        remote,
        fix: problem ?? `register it with: tower token ${config.name}`,
      });
      metrics.loginFailures.inc({ reason: 'unknown_cluster' });
      return UNAUTHORIZED;
    }
    if (cluster.problem) {
      log.warn('agent refused: the cluster record is unusable', {
        cluster: config.name,
        remote,
        fix: `tower token ${config.name} --rotate`,
      });
      metrics.loginFailures.inc({ reason: 'unusable_record' });
      return UNAUTHORIZED;
    }
    if (!tokensEqual(config.token, cluster.token)) {
      log.warn('agent refused: wrong token', {
        cluster: config.name,
        remote,
        fix: `print the current token with: tower token ${config.name}`,
      });
      metrics.loginFailures.inc({ reason: 'wrong_token' });
      return UNAUTHORIZED;
    }
    return undefined;
  }

  /** A session whose handshake ended: into the registry, unless its cluster or token changed meanwhile. */
  admit(session: AgentSession): void {
    const { registry, log, metrics } = this.#opts;
    const cluster = this.#opts.clusters.get(session.name);
    // the token may have rotated, or the cluster gone, while the handshake ran
    if (!cluster || cluster.problem || !tokensEqual(session.config.token, cluster.token)) {
      session.close();
      return;
    }
    registry.add(session);
    session.setChannelWindow(this.#opts.channelWindow);
    session.tell(this.#opts.view());
    const tlsAtAgent = session.config.features?.includes(FEATURE_TLS_AT_AGENT) ?? false;
    log.info('agent connected', {
      cluster: session.name,
      remote: session.remote,
      session: session.id,
      agents: registry.count(session.name),
      version: session.config.version || undefined,
      upstream: session.config.kubernetesSvcHost,
      auth: session.config.bearerToken?.length
        ? 'bearer token'
        : session.config.certData?.length
          ? 'client certificate'
          : tlsAtAgent
            ? 'kept by the agent'
            : 'none',
      upstreamTls: tlsAtAgent ? 'agent' : 'proxy',
    });
    session.once('close', () => metrics.sessionClosed(session));
    session.once('close', () =>
      log.info('agent disconnected', {
        cluster: session.name,
        session: session.id,
        agents: registry.count(session.name),
      }),
    );
  }
}

export function tokensEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  // compare equal lengths only, so that the time does not tell where they differ
  if (x.length !== y.length) {
    timingSafeEqual(y, y);
    return false;
  }
  return timingSafeEqual(x, y);
}
