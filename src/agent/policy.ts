/**
 * A member policy: what the member's owner lets the proxy ask of this cluster through the agent,
 * in the terms of RBAC (verbs, API groups, resources with subresources, namespaces, non-resource
 * URLs) and of who is impersonated (users, groups). Rules are read in order and the first that
 * matches decides; a request no rule matches gets `default`. The agent judges every request head
 * before anything of it reaches the member; the proxy can neither see nor change the policy.
 */
import { parse as parseYaml } from 'yaml';
import type { RequestInfo } from './request-info.ts';

export const POLICY_API_VERSION = 'tower.kubesphere.io/v1alpha1';
export const POLICY_KIND = 'MemberPolicy';
/** in `users`: a request that impersonates no one, and so acts as the agent's own account */
export const AGENT_SUBJECT = '@agent';
export const PRESETS = ['read-only', 'namespaced'] as const;
export type Preset = (typeof PRESETS)[number];

type Action = 'allow' | 'deny';

export interface PolicyRule {
  name: string;
  action: Action;
  users?: string[];
  groups?: string[];
  verbs?: string[];
  apiGroups?: string[];
  resources?: string[];
  namespaces?: string[];
  nonResourceURLs?: string[];
}

export interface MemberPolicy {
  rules: PolicyRule[];
  /** what a request no rule matches gets */
  default: Action;
  /** whether requests to ks-apiserver are carried (unjudged: ks-apiserver authenticates and authorizes its users) */
  kubesphere: Action;
}

/** What the policy decided for one request, and which rule decided it (undefined: the default). */
export interface Verdict {
  allowed: boolean;
  rule: string | undefined;
}

const RULE_NAME = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/;
const LIST_FIELDS = ['users', 'groups', 'verbs', 'apiGroups', 'resources', 'namespaces', 'nonResourceURLs'] as const;
const RESOURCE_FIELDS = ['apiGroups', 'resources', 'namespaces'] as const;
const TOP_FIELDS = new Set(['apiVersion', 'kind', 'default', 'kubesphere', 'rules']);
const RULE_FIELDS = new Set<string>(['name', 'action', ...LIST_FIELDS]);
const MAX_RULES = 1000;
const MAX_ENTRIES = 1000;

/** A policy that cannot be read: its message names the place and the fix. */
export class PolicyError extends Error {}

/** The policy in `text` (YAML or JSON), checked whole: an unknown field or a malformed rule is an error. */
export function parsePolicy(text: string): MemberPolicy {
  let doc: unknown;
  try {
    doc = parseYaml(text, { maxAliasCount: 0 });
  } catch (err) {
    throw new PolicyError(`not YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  if (!isObject(doc)) throw new PolicyError(`expected a ${POLICY_KIND} object`);
  for (const k of Object.keys(doc)) if (!TOP_FIELDS.has(k)) throw new PolicyError(`unknown field ${JSON.stringify(k)}`);
  if (doc.apiVersion !== undefined && doc.apiVersion !== POLICY_API_VERSION)
    throw new PolicyError(`apiVersion must be ${POLICY_API_VERSION}`);
  if (doc.kind !== undefined && doc.kind !== POLICY_KIND) throw new PolicyError(`kind must be ${POLICY_KIND}`);
  const rules = doc.rules ?? [];
  if (!Array.isArray(rules)) throw new PolicyError('rules must be a list');
  if (rules.length > MAX_RULES) throw new PolicyError(`more than ${MAX_RULES} rules`);
  const names = new Set<string>();
  const parsed = rules.map((r, i) => {
    const rule = parseRule(r, i);
    if (names.has(rule.name)) throw new PolicyError(`two rules are named ${JSON.stringify(rule.name)}`);
    names.add(rule.name);
    return rule;
  });
  return {
    rules: parsed,
    default: action(doc.default ?? 'deny', 'default'),
    kubesphere: action(doc.kubesphere ?? 'deny', 'kubesphere'),
  };
}

function parseRule(r: unknown, i: number): PolicyRule {
  if (!isObject(r)) throw new PolicyError(`rules[${i}] must be an object`);
  const where = `rules[${i}]`;
  for (const k of Object.keys(r)) if (!RULE_FIELDS.has(k)) throw new PolicyError(`${where}: unknown field ${k}`);
  if (typeof r.name !== 'string' || !RULE_NAME.test(r.name))
    throw new PolicyError(`${where}: name must be lower-case letters, digits, '-' and '.' (at most 63)`);
  const rule: PolicyRule = { name: r.name, action: action(r.action, `${where} (${r.name}).action`) };
  for (const field of LIST_FIELDS) {
    const v = r[field];
    if (v === undefined) continue;
    if (!Array.isArray(v) || v.length === 0 || v.length > MAX_ENTRIES || !v.every((e) => typeof e === 'string'))
      throw new PolicyError(`${where} (${r.name}).${field} must be a non-empty list of strings`);
    for (const e of v as string[]) checkEntry(field, e, `${where} (${r.name}).${field}`);
    rule[field] = v as string[];
  }
  if (rule.nonResourceURLs && RESOURCE_FIELDS.some((f) => rule[f]))
    throw new PolicyError(
      `${where} (${r.name}): nonResourceURLs cannot stand beside apiGroups, resources or namespaces (make two rules)`,
    );
  return rule;
}

function checkEntry(field: (typeof LIST_FIELDS)[number], e: string, where: string): void {
  if (/[\x00-\x1f\x7f]/.test(e)) throw new PolicyError(`${where}: a control character`);
  if (field === 'resources' && e !== '*' && !/^(\*|[^/*]+)(\/(\*|[^/*]+))?$/.test(e))
    throw new PolicyError(`${where}: ${JSON.stringify(e)} is not a resource, resource/subresource, or one with *`);
  if (field === 'nonResourceURLs' && e !== '*' && !/^\/[^*]*\*?$/.test(e))
    throw new PolicyError(`${where}: ${JSON.stringify(e)} must be a path, or a path ending in *`);
  if ((field === 'verbs' || field === 'users' || field === 'groups') && e === '')
    throw new PolicyError(`${where}: an empty entry`);
}

function action(v: unknown, where: string): Action {
  if (v !== 'allow' && v !== 'deny') throw new PolicyError(`${where} must be allow or deny`);
  return v;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The first rule that matches decides; then the default. */
export function judge(policy: MemberPolicy, info: RequestInfo): Verdict {
  for (const rule of policy.rules)
    if (matches(rule, info)) return { allowed: rule.action === 'allow', rule: rule.name };
  return { allowed: policy.default === 'allow', rule: undefined };
}

function matches(rule: PolicyRule, info: RequestInfo): boolean {
  const { subject } = info;
  if (
    rule.users &&
    !rule.users.some((u) => (subject.agent ? u === AGENT_SUBJECT || u === '*' : u === subject.user || u === '*'))
  )
    return false;
  if (rule.groups && !rule.groups.some((g) => g === '*' || subject.groups.includes(g))) return false;
  if (rule.verbs && !rule.verbs.some((v) => v === '*' || v === info.verb)) return false;
  if (rule.nonResourceURLs) return !info.resourceRequest && rule.nonResourceURLs.some((p) => pathMatches(p, info.path));
  if (rule.apiGroups || rule.resources || rule.namespaces) {
    if (!info.resourceRequest) return false;
    if (rule.apiGroups && !rule.apiGroups.some((g) => g === '*' || g === info.apiGroup)) return false;
    if (rule.resources && !rule.resources.some((r) => resourceMatches(r, info.resource))) return false;
    if (rule.namespaces && !rule.namespaces.some((n) => n === '*' || n === info.namespace)) return false;
  }
  return true;
}

/** `*`, `pods` (not its subresources), `pods/exec`, `pods/*`, `*\/exec`: as RBAC reads them */
function resourceMatches(pattern: string, resource: string): boolean {
  if (pattern === '*' || pattern === resource) return true;
  const slash = resource.indexOf('/');
  if (slash < 0) return false;
  const [p0, p1] = pattern.split('/');
  if (p1 === undefined) return false;
  return (p0 === '*' || p0 === resource.slice(0, slash)) && (p1 === '*' || p1 === resource.slice(slash + 1));
}

function pathMatches(pattern: string, path: string): boolean {
  if (pattern === '*') return true;
  return pattern.endsWith('*') ? path.startsWith(pattern.slice(0, -1)) : path === pattern;
}

/** What a refusal says of the request: "create pods/exec in namespace default as user jane". */
export function describeRequest(info: RequestInfo): string {
  const what = info.resourceRequest
    ? `${info.verb} ${info.apiGroup ? `${info.resource}.${info.apiGroup}` : info.resource}` +
      (info.namespace ? ` in namespace ${info.namespace}` : '')
    : `${info.verb} ${info.path}`;
  const who = info.subject.agent ? "as the agent's own account" : `as user ${info.subject.user}`;
  return `${what} ${who}`;
}

/**
 * A preset `tower install agent --policy-preset` writes, as YAML the owner can then edit. Both let
 * the proxy ask the member about impersonation (SubjectAccessReviews, as the agent) and nothing else
 * as the agent's own account.
 */
export function presetPolicy(preset: Preset, namespaces: string[] = []): string {
  const head = [
    `apiVersion: ${POLICY_API_VERSION}`,
    `kind: ${POLICY_KIND}`,
    '# rules are read in order; the first that matches decides, else the default',
    'default: deny',
    '# requests to ks-apiserver (it authenticates and authorizes its own users)',
    'kubesphere: deny',
    'rules:',
    '  - name: impersonation-reviews',
    '    action: allow',
    `    users: ["${AGENT_SUBJECT}"]`,
    '    verbs: [create]',
    '    apiGroups: [authorization.k8s.io]',
    '    resources: [subjectaccessreviews]',
    '  - name: not-as-the-agent',
    '    action: deny',
    `    users: ["${AGENT_SUBJECT}"]`,
  ];
  const discovery = [
    '  - name: discovery',
    '    action: allow',
    '    verbs: [get]',
    '    nonResourceURLs: [/api, /api/*, /apis, /apis/*, /version, /openapi/*]',
  ];
  if (preset === 'read-only')
    return [
      ...head,
      '  - name: never-secrets',
      '    action: deny',
      '    resources: [secrets]',
      '  # streams into pods and nodes, whatever API serves them (KubeVirt has consoles and VNC)',
      '  - name: never-into-pods',
      '    action: deny',
      '    resources: ["*/exec", "*/attach", "*/portforward", "*/proxy", "*/console", "*/vnc"]',
      ...discovery,
      '  - name: read-only',
      '    action: allow',
      '    verbs: [get, list, watch]',
      '    resources: ["*"]',
      '',
    ].join('\n');
  if (namespaces.length === 0) throw new PolicyError('the namespaced preset needs at least one namespace');
  return [
    ...head,
    ...discovery,
    "  # a Namespace object counts as in itself: its labels (which admission reads) and its deletion stay the owner's",
    '  - name: namespaces-read-only',
    '    action: deny',
    '    verbs: [create, update, patch, delete, deletecollection]',
    '    apiGroups: [""]',
    '    resources: [namespaces, "namespaces/*"]',
    '  - name: own-namespaces',
    '    action: allow',
    `    namespaces: [${namespaces.map((n) => JSON.stringify(n)).join(', ')}]`,
    '',
  ].join('\n');
}
