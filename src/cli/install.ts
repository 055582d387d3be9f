import { stringify as toYaml } from 'yaml';
import { INSTALL_AGENT_OPTIONS, INSTALL_PROXY_OPTIONS, kubeMinor } from '../config/options.ts';
import { ConfigError } from '../errors.ts';
import { agentManifests, pdbApiVersionFor, proxyManifests, type PdbApiVersion } from '../mode/kubernetes/manifests.ts';
import { normalizeProxyServer, proxyVerification } from '../agent/agent.ts';
import { clusterNameProblem, reachOf } from '../config/names.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

function printAll(objects: Record<string, unknown>[]): void {
  process.stdout.write(objects.map((o) => '---\n' + toYaml(o, { lineWidth: 0 })).join(''));
}

export class InstallProxyCommand extends TowerCommand {
  static override paths = [['install', 'proxy']];
  static override options = INSTALL_PROXY_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'install proxy',
    summary: 'Print the manifests that run the proxy in a host cluster',
    details:
      `The Cluster CRD (KubeSphere's; applying it again changes nothing), namespace kubesphere-system, a ` +
      `ServiceAccount with RBAC limited to what the proxy touches, the Deployment (in-cluster config, Kubernetes ` +
      `mode; liveness and readiness probes on /livez and /readyz, metrics on the agent port) and a Service for the ` +
      `agents; with --replicas over 1, a PodDisruptionBudget of the version the cluster serves (asked with ` +
      `--kubeconfig, or told with --kube-version; policy/v1 otherwise). Pipe it to \`kubectl apply -f -\`.`,
    examples: [
      [
        'Install into the current cluster',
        'tower install proxy --image registry.example/tower:1.0 --publish-service-address tower.example.com | ' +
          'kubectl apply -f -',
      ],
      [
        'Two replicas on Kubernetes 1.20',
        'tower install proxy --replicas 2 --kubeconfig host.kubeconfig | ' +
          'kubectl --kubeconfig host.kubeconfig apply -f -',
      ],
    ],
  };
  readonly command = 'install';

  async run(): Promise<number> {
    const o = this.load(INSTALL_PROXY_OPTIONS);
    if (reachOf(o.publishServiceAddress) !== 'anywhere')
      process.stderr.write(
        `warning: --publish-service-address ${o.publishServiceAddress} is what the proxy tells agents and puts in ` +
          `join commands, and only pods of this cluster reach it: for members elsewhere, give the address they ` +
          `reach and expose the Service (README: Expose the proxy)\n`,
      );
    printAll(
      proxyManifests({
        image: o.image,
        replicas: o.replicas,
        publishServiceAddress: o.publishServiceAddress,
        serviceType: o.serviceType,
        pdbApiVersion: o.replicas > 1 ? await pdbApiVersion(o.kubeconfig, o.kubeVersion) : 'policy/v1',
      }),
    );
    return 0;
  }
}

/** What the target serves: asked when there is a kubeconfig, else from --kube-version, else the current one. */
async function pdbApiVersion(kubeconfig: string | undefined, kubeVersion: string | undefined): Promise<PdbApiVersion> {
  if (kubeconfig) {
    // loaded only here: the Kubernetes client is large, and no other install path needs it
    const { HostCluster } = await import('../mode/kubernetes/api.ts');
    return (await new HostCluster(kubeconfig).servesPolicyV1()) ? 'policy/v1' : 'policy/v1beta1';
  }
  if (kubeVersion) return pdbApiVersionFor(kubeMinor(kubeVersion)!);
  process.stderr.write(
    'the PodDisruptionBudget is policy/v1 (Kubernetes 1.21 and later); for an older cluster give ' +
      '--kubeconfig <cluster> or --kube-version <version>\n',
  );
  return 'policy/v1';
}

export class InstallAgentCommand extends TowerCommand {
  static override paths = [['install', 'agent']];
  static override options = INSTALL_AGENT_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'install agent --name NAME --token TOKEN --proxy-server URL --proxy-fingerprint SHA256:...',
    summary: 'Print the manifests that run an agent in a member cluster',
    details:
      `A ServiceAccount that may impersonate users and groups and create SubjectAccessReviews (a tower proxy acts ` +
      `as each gateway user's certificate; --cluster-admin binds cluster-admin instead, for a Go tower proxy or ` +
      `--gateway-identity agent), the token in a Secret, and the agent's Deployment (liveness and readiness ` +
      `probes, metrics on port 8081). Pipe it to \`kubectl apply -f -\` against the member cluster.`,
    examples: [
      [
        'With what `tower token` printed',
        'tower install agent --name alpha --token <token> --proxy-server http://tower.example.com:8080 ' +
          '--proxy-fingerprint SHA256:<fingerprint> | kubectl apply -f -',
      ],
    ],
  };
  readonly command = 'install';

  async run(): Promise<number> {
    const o = this.load(INSTALL_AGENT_OPTIONS, ['token']);
    if (!o.name) throw new ConfigError("--name is required: the cluster's name, as `tower token` registered it");
    const problem = clusterNameProblem(o.name);
    if (problem) throw new ConfigError(`invalid --name ${JSON.stringify(o.name)}: ${problem}`);
    if (!o.token) throw new ConfigError('--token is required: print it with `tower token <name>`');
    if (!o.proxyServer)
      throw new ConfigError("--proxy-server is required: the proxy's agent endpoint, as `tower token` prints it");
    const proxyHost = new URL(normalizeProxyServer(o.proxyServer)).hostname;
    if (reachOf(proxyHost) === 'loopback')
      throw new ConfigError(
        `--proxy-server ${o.proxyServer} is a loopback address: in the agent's pod it is the pod itself. Give the ` +
          `address the member reaches the proxy at (README: Expose the proxy)`,
      );
    if (reachOf(proxyHost) === 'cluster')
      process.stderr.write(
        `warning: --proxy-server ${o.proxyServer} is a Service name: only pods of the cluster that runs the proxy ` +
          `resolve it, so this works only when the member is that cluster (README: Expose the proxy)\n`,
      );
    if (
      !proxyVerification(normalizeProxyServer(o.proxyServer), o.proxyFingerprint, undefined) &&
      !o.insecureSkipProxyVerification
    ) {
      throw new ConfigError(
        `--proxy-fingerprint is required with a plain http:// --proxy-server, so that the agent can verify the ` +
          `proxy (the join command that \`tower token ${o.name}\` prints has it); or ` +
          `--insecure-skip-proxy-verification`,
      );
    }
    printAll(
      agentManifests({
        image: o.image,
        name: o.name,
        token: o.token,
        proxyServer: o.proxyServer,
        proxyFingerprint: o.proxyFingerprint,
        kubesphereService: o.kubesphereService,
        insecureSkipProxyVerification: o.insecureSkipProxyVerification,
        clusterAdmin: o.clusterAdmin,
      }),
    );
    return 0;
  }
}
