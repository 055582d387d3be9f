import { stringify as toYaml } from 'yaml';
import {
  INSTALL_AGENT_OPTIONS,
  INSTALL_CRD_OPTIONS,
  INSTALL_PROXY_OPTIONS,
  kubeMinor,
  parseLabelSelector,
} from '../config/options.ts';
import { ConfigError } from '../errors.ts';
import { presetPolicy, type Preset } from '../agent/policy.ts';
import {
  agentManifests,
  clusterCrd,
  CRD_INSTALLED_BY,
  CRD_MATCHES_KUBESPHERE,
  namespace,
  pdbApiVersionFor,
  proxyManifests,
  type MetricsFence,
  type PdbApiVersion,
} from '../mode/kubernetes/manifests.ts';
import { normalizeProxyServer, proxyVerification } from '../agent/agent.ts';
import { clusterNameProblem, reachOf } from '../config/names.ts';
import { TowerCommand, type CommandDoc } from './base.ts';

/**
 * plain YAML: an object used twice (labels, selectors) is written twice, never as an anchor and an alias; and
 * quoted as YAML 1.1 reads it, as kubectl does: `team=on` stays the string "on", not true
 */
function printAll(objects: Record<string, unknown>[]): void {
  process.stdout.write(
    objects.map((o) => '---\n' + toYaml(o, { version: '1.1', lineWidth: 0, aliasDuplicateObjects: false })).join(''),
  );
}

/** the NetworkPolicy's peers, from flags their checks have validated */
function metricsFence(namespaces: string | undefined, pods: string | undefined): MetricsFence | undefined {
  if (!namespaces) {
    if (pods)
      throw new ConfigError('--metrics-from-pods narrows --metrics-from-namespaces: give that too (e.g. monitoring)');
    return undefined;
  }
  return { namespaces: parseLabelSelector(namespaces)!, ...(pods ? { pods: parseLabelSelector(pods)! } : {}) };
}

/** The port range that keeps the clusters' own ports open in the proxy's NetworkPolicy (endPort) is 1.22's. */
const NETWORK_POLICY_END_PORT_MINOR = 22;

export class InstallProxyCommand extends TowerCommand {
  static override paths = [['install', 'proxy']];
  static override options = INSTALL_PROXY_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'install proxy',
    summary: 'Print the manifests that run the proxy in a host cluster',
    details:
      `With --with-crd KubeSphere's Cluster CRD (${CRD_MATCHES_KUBESPHERE}'s; needs --kubeconfig, and is ` +
      `refused when the host has one tower did not install) and with --with-namespace namespace ` +
      `kubesphere-system; always a ServiceAccount with RBAC limited to what the proxy touches, the ` +
      `Deployment (in-cluster config, Kubernetes mode; liveness and readiness probes on /livez and /readyz, ` +
      `metrics on port 8081) and a Service for the agents; with --replicas over 1, a PodDisruptionBudget of ` +
      `the version the cluster serves (asked with --kubeconfig, or told with --kube-version; policy/v1 ` +
      `otherwise) and spread over nodes. The pods pass Pod Security "restricted" (user 65532). Pipe it to ` +
      `\`kubectl apply -f -\`.`,
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
    if (o.withCrd) await refuseForeignCrd(o.kubeconfig);
    const fence = metricsFence(o.metricsFromNamespaces, o.metricsFromPods);
    const minor = o.replicas > 1 || fence ? await targetMinor(o.kubeconfig, o.kubeVersion) : undefined;
    let pdbApiVersion: PdbApiVersion = 'policy/v1';
    if (minor !== undefined) pdbApiVersion = pdbApiVersionFor(minor);
    else if (o.replicas > 1)
      process.stderr.write(
        'the PodDisruptionBudget is policy/v1 (Kubernetes 1.21 and later); for an older cluster give ' +
          '--kubeconfig <cluster> or --kube-version <version>\n',
      );
    if (fence && minor !== undefined && minor < NETWORK_POLICY_END_PORT_MINOR)
      throw new ConfigError(
        `--metrics-from-namespaces needs Kubernetes 1.${NETWORK_POLICY_END_PORT_MINOR} or later for the proxy ` +
          `(its NetworkPolicy keeps the clusters' ports open with a port range, endPort) and this cluster is ` +
          `1.${minor}: leave it out and fence /metrics (port 8081) where your network allows`,
      );
    if (fence && minor === undefined)
      process.stderr.write(
        `the NetworkPolicy keeps the clusters' ports open with a port range (endPort, Kubernetes ` +
          `1.${NETWORK_POLICY_END_PORT_MINOR} and later); for an older cluster it fences them too\n`,
      );
    printAll(
      proxyManifests({
        image: o.image,
        replicas: o.replicas,
        publishServiceAddress: o.publishServiceAddress,
        serviceType: o.serviceType,
        pdbApiVersion,
        metricsFence: fence,
        withCrd: o.withCrd,
        withNamespace: o.withNamespace,
      }),
    );
    return 0;
  }
}

export class InstallCrdCommand extends TowerCommand {
  static override paths = [['install', 'crd']];
  static override options = INSTALL_CRD_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'install crd',
    summary: "Print KubeSphere's Cluster CRD (and its namespace), for a host without KubeSphere",
    details:
      `KubeSphere's Cluster CRD as its ${CRD_MATCHES_KUBESPHERE} release defines it, marked as tower's, and with ` +
      `--with-namespace the namespace kubesphere-system: what a proxy in Kubernetes mode needs on a host without ` +
      `KubeSphere, and nothing else (no proxy). It asks the host (--kubeconfig, required) and refuses when ` +
      `the host has a Cluster CRD that tower did not install. No uninstall deletes either. The same as tower ` +
      `install proxy --with-crd --with-namespace prints besides the proxy.`,
    examples: [
      [
        'A plain host, for a proxy run outside it',
        'tower install crd --with-namespace --kubeconfig host.kubeconfig | ' +
          'kubectl --kubeconfig host.kubeconfig apply -f -',
      ],
    ],
  };
  readonly command = 'install';

  async run(): Promise<number> {
    const o = this.load(INSTALL_CRD_OPTIONS);
    await refuseForeignCrd(o.kubeconfig);
    printAll([...(o.withNamespace ? [namespace()] : []), clusterCrd()]);
    return 0;
  }
}

/**
 * --with-crd must not overwrite a Cluster CRD that tower did not install (a KubeSphere release's own): asked of the
 * host when there is a kubeconfig.
 */
async function refuseForeignCrd(kubeconfig: string | undefined): Promise<void> {
  // applied over KubeSphere's own, the CRD's schema would prune what KubeSphere keeps in its Clusters
  if (!kubeconfig)
    throw new ConfigError(
      `printing the Cluster CRD needs --kubeconfig <host>: tower checks that the host has no Cluster CRD it did ` +
        `not install (KubeSphere's own), which applying this one would overwrite`,
    );
  const { HostCluster } = await import('../mode/kubernetes/api.ts');
  const installed = await new HostCluster(kubeconfig).clusterCrdAnnotations();
  if (installed && installed[CRD_INSTALLED_BY] !== 'tower')
    throw new ConfigError(
      `the host already has a Cluster CRD (clusters.cluster.kubesphere.io) that tower did not install, ` +
        `KubeSphere's own perhaps: it must stay as it is (leave out --with-crd, or tower install crd)`,
    );
}

/** The target's Kubernetes minor version: asked when there is a kubeconfig, else --kube-version, else unknown. */
async function targetMinor(
  kubeconfig: string | undefined,
  kubeVersion: string | undefined,
): Promise<number | undefined> {
  if (kubeconfig) {
    // loaded only here: the Kubernetes client is large, and no other install path needs it
    const { HostCluster } = await import('../mode/kubernetes/api.ts');
    return new HostCluster(kubeconfig).minorVersion();
  }
  return kubeVersion ? kubeMinor(kubeVersion) : undefined;
}

export class InstallAgentCommand extends TowerCommand {
  static override paths = [['install', 'agent']];
  static override options = INSTALL_AGENT_OPTIONS;
  static override doc: CommandDoc = {
    usage: 'install agent --name NAME --token TOKEN --proxy-server URL --proxy-fingerprint SHA256:...',
    summary: 'Print the manifests that run an agent in a member cluster',
    details:
      `With --with-namespace namespace kubesphere-system; a ServiceAccount that may impersonate users and groups ` +
      `and create SubjectAccessReviews (a tower proxy acts ` +
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
        policy: policyOf(o.policyPreset, o.policyNamespaces),
        image: o.image,
        name: o.name,
        token: o.token,
        proxyServer: o.proxyServer,
        proxyFingerprint: o.proxyFingerprint,
        kubesphereService: o.kubesphereService,
        insecureSkipProxyVerification: o.insecureSkipProxyVerification,
        clusterAdmin: o.clusterAdmin,
        metricsFence: metricsFence(o.metricsFromNamespaces, o.metricsFromPods),
        withNamespace: o.withNamespace,
      }),
    );
    return 0;
  }
}

/** The policy text of --policy-preset, its namespaces checked. */
function policyOf(preset: string | undefined, namespaces: string | undefined): string | undefined {
  if (preset === undefined) {
    if (namespaces !== undefined) throw new ConfigError('--policy-namespaces goes with --policy-preset namespaced');
    return undefined;
  }
  const list = (namespaces ?? '').split(',').filter((n) => n !== '');
  if (preset === 'namespaced') {
    if (list.length === 0)
      throw new ConfigError('--policy-preset namespaced needs --policy-namespaces (e.g. --policy-namespaces team-a)');
    const bad = list.find((n) => !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(n));
    if (bad) throw new ConfigError(`--policy-namespaces: ${JSON.stringify(bad)} is not a namespace name`);
  } else if (namespaces !== undefined)
    throw new ConfigError('--policy-namespaces goes with --policy-preset namespaced, not ' + preset);
  return presetPolicy(preset as Preset, list);
}
