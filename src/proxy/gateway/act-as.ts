/**
 * The identity stage: whom a request acts as in the member. The certificate's identity, or the
 * impersonation the client asked for (`kubectl --as`) once the member said that identity may.
 * Where the upstream has no reviewer (another replica), that replica settles it as this one would.
 */
import type { IncomingMessage } from 'node:http';
import type { Refusal } from '../../http/status.ts';
import { impersonationRequest, type ImpersonationCheck } from '../identity.ts';
import type { ActAs, Upstream } from '../upstream.ts';
import { refusals } from './refusals.ts';
import type { Route } from './route.ts';

/**
 * Whom `req` acts as through `upstream`; a refusal when it may not act as what it asked. Settled at
 * once unless the member must be asked (a client's own impersonation): the common request pays no
 * promise.
 */
export function actAs(
  req: IncomingMessage,
  route: Route,
  upstream: Upstream,
  check: ImpersonationCheck,
): { actAs: ActAs } | Refusal | Promise<{ actAs: ActAs } | Refusal> {
  const identity = route.identity;
  const reviewer = upstream.reviewer;
  if (!identity || !reviewer) return { actAs: undefined };
  const wanted = impersonationRequest(req as IncomingMessage & { headersDistinct: Record<string, string[]> });
  if (wanted === undefined) return { actAs: identity };
  if (typeof wanted === 'string') return refusals.badImpersonation(wanted);
  return check.denied(reviewer, route.cluster, identity, wanted).then(
    (denied) => (denied ? refusals.impersonationDenied(denied) : { actAs: wanted }),
    (err: Error) => refusals.impersonationUnknown(route.cluster, identity.user, err),
  );
}
