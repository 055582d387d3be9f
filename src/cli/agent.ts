import { readFileOrExplain } from '../config/files.ts';
import { ConfigError } from '../errors.ts';
import { AGENT_OPTIONS } from '../config/options.ts';
import { formatDuration } from '../config/duration.ts';
import { log } from '../observe/log.ts';
import { trimMemoryPeriodically } from '../observe/memory.ts';
import { nameProcess } from '../native/index.ts';
import { normalizeProxyServer, proxyVerification, TowerAgent } from '../agent/agent.ts';
import { credentialsFromKubeconfig, credentialsInCluster, type Credentials } from '../agent/credentials.ts';
import { configMapOrigin, fileOrigin, PolicyHolder } from '../agent/policy-source.ts';
import type { RecordingOptions } from '../agent/recording.ts';
import { clusterNameProblem } from '../config/names.ts';
import { CRYPTO_BACKEND } from '../tunnel/ssh.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

export class AgentCommand extends TowerCommand {
  static override paths = [['agent']];
  static override options = AGENT_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'agent --name NAME --token TOKEN --proxy-server URL --proxy-fingerprint SHA256:...',
    summary: 'Connect a member cluster to the proxy',
    details:
      "Dials the proxy, verifies it (its host key, or its TLS certificate), announces this cluster's " +
      "kube-apiserver, and carries the proxy's requests to it with this cluster's credentials, which a tower " +
      "proxy never receives. Without --kubeconfig it uses the pod's service account. It redials with a " +
      'jittered backoff of at most --max-retry-interval.',
    examples: [
      [
        'Join with the command that `tower token` printed',
        'tower agent --name alpha --token <token> --proxy-server http://proxy.example:8080 ' +
          '--proxy-fingerprint SHA256:<fingerprint> --kubeconfig member.kubeconfig',
      ],
    ],
  };
  readonly command = 'agent';

  async run(): Promise<number> {
    const o = this.load(AGENT_OPTIONS, ['token']);
    if (!o.name) throw new ConfigError('--name is required: the cluster name given to `tower token`');
    const problem = clusterNameProblem(o.name);
    if (problem) throw new ConfigError(`invalid --name ${JSON.stringify(o.name)}: ${problem}`);
    if (!o.token)
      throw new ConfigError(`--token is required: print it on the proxy's host with: tower token ${o.name}`);
    const proxyUrl = normalizeProxyServer(o.proxyServer);
    if (o.proxyCa && !proxyUrl.startsWith('wss:'))
      throw new ConfigError(
        `--proxy-ca verifies a TLS proxy, but --proxy-server ${o.proxyServer} is not https:// (or wss://)`,
      );
    const verifiedBy = proxyVerification(proxyUrl, o.proxyFingerprint, o.proxyCa);
    // nothing is sent to a proxy that nothing verifies: not the token, not a credential
    if (!verifiedBy && !o.insecureSkipProxyVerification) {
      throw new ConfigError(
        `refusing to connect to ${o.proxyServer}: nothing verifies that it is the proxy. Give ` +
          `--proxy-fingerprint (the join command that \`tower token ${o.name}\` prints has it), or an https:// ` +
          '--proxy-server whose certificate verifies (--proxy-ca), or --insecure-skip-proxy-verification to ' +
          'connect anyway',
      );
    }
    const recording = recordingOf(o);
    const proxyCa = o.proxyCa ? readProxyCa(o.proxyCa) : undefined;
    const kubeconfig = o.kubeconfig;
    const credentials = kubeconfig ? () => credentialsFromKubeconfig(kubeconfig) : () => credentialsInCluster();
    credentials(); // fail now, with the reason, rather than in the retry loop
    const policy = await memberPolicy({ ...o, name: o.name }, credentials);
    // loaded with the flag only: an agent without it carries no metrics library
    const health = o.healthPort !== undefined ? new (await import('../agent/health.ts')).AgentHealth() : undefined;
    const agent = new TowerAgent({
      name: o.name,
      token: o.token,
      proxyUrl,
      credentials,
      kubernetesService: o.kubernetesService,
      kubesphereService: o.kubesphereService,
      keepaliveMs: o.keepalive,
      maxRetry: o.maxRetry,
      // as the Go agent: an interval under a second means the default
      maxRetryIntervalMs: o.maxRetryInterval < 1000 ? 30_000 : o.maxRetryInterval,
      proxyFingerprint: o.proxyFingerprint,
      proxyCa,
      insecureSkipProxyVerification: o.insecureSkipProxyVerification,
      tlsAtAgent: o.tlsAtAgent,
      maxChannels: o.maxChannels,
      maxStalledBytes: o.maxStalledMemory,
      onDial: health?.dial,
      policy,
      recording,
      log,
    });
    if (health && o.healthPort !== undefined) {
      const port = await health.listen(agent, o.healthHost, o.healthPort).catch((err: NodeJS.ErrnoException) => {
        throw new ConfigError(
          `cannot serve --health-port on ${o.healthHost}:${o.healthPort}: ` +
            (err.code === 'EADDRINUSE' ? 'the port is in use; choose another' : err.message),
        );
      });
      log.info('health and metrics serving', { address: `${o.healthHost}:${port}`, paths: '/livez /readyz /metrics' });
    }
    if (!verifiedBy)
      log.warn(
        'INSECURE: --insecure-skip-proxy-verification: the proxy is not verified; whoever answers at its ' +
          "address gets this cluster's requests",
      );
    log.info('agent starting', {
      cluster: o.name,
      proxy: proxyUrl,
      verified: verifiedBy || 'no',
      keepalive: formatDuration(o.keepalive),
      crypto: CRYPTO_BACKEND,
      policy: policy?.origin.describe ?? 'none',
    });
    const stop = () => agent.stop();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    nameProcess();
    const stopTrimming = trimMemoryPeriodically(log);
    try {
      await agent.run();
    } finally {
      stopTrimming();
      health?.close();
      policy?.close();
    }
    log.info('agent stopped');
    return 0;
  }
}

/** --policy or --policy-configmap, read once here so that a missing or malformed policy stops the agent now. */
async function memberPolicy(
  o: { policy?: string; policyConfigmap?: string; name: string; tlsAtAgent: boolean },
  credentials: () => Credentials,
): Promise<PolicyHolder | undefined> {
  if (o.policy === undefined && o.policyConfigmap === undefined) return undefined;
  if (o.policy !== undefined && o.policyConfigmap !== undefined)
    throw new ConfigError('give --policy or --policy-configmap, not both');
  if (!o.tlsAtAgent)
    throw new ConfigError(
      'a member policy needs --tls-at-agent: the agent must read each request to judge it, so it makes the TLS',
    );
  const origin = o.policy !== undefined ? fileOrigin(o.policy) : configMapOrigin(o.policyConfigmap!, credentials);
  const holder = new PolicyHolder(origin, o.name, log);
  await holder.start();
  return holder;
}

/** --record-*: what to record, where; the other flags mean nothing without --record-exec */
function recordingOf(o: {
  recordExec?: string;
  recordStdin: boolean;
  recordFailure: string;
  recordMaxBytes: number;
  tlsAtAgent: boolean;
}): RecordingOptions | undefined {
  if (!o.recordExec) {
    if (o.recordStdin) throw new ConfigError('--record-stdin records with --record-exec DIR: give it too');
    return undefined;
  }
  // only the channels the agent reads can be recorded; without them every kube-apiserver channel is refused
  if (!o.tlsAtAgent)
    throw new ConfigError(
      '--record-exec needs the TLS to the kube-apiserver made at the agent: --no-tls-at-agent would leave ' +
        'nothing it can record',
    );
  return {
    dir: o.recordExec,
    stdin: o.recordStdin,
    failure: o.recordFailure === 'open' ? 'open' : 'closed',
    maxBytes: o.recordMaxBytes,
  };
}

function readProxyCa(path: string): string {
  const pem = readFileOrExplain(path, '--proxy-ca').toString('utf8');
  if (!pem.includes('-----BEGIN CERTIFICATE-----'))
    throw new ConfigError(`--proxy-ca ${path} holds no PEM certificate`);
  return pem;
}
