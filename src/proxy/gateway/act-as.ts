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

/** Whom `req` acts as through `upstream`; a refusal when it may not act as what it asked. */
export async function actAs(
  req: IncomingMessage,
  route: Route,
  upstream: Upstream,
  check: ImpersonationCheck,
): Promise<{ actAs: ActAs } | Refusal> {
  const identity = route.identity;
  const reviewer = upstream.reviewer;
  if (!identity || !reviewer) return { actAs: undefined };
  const wanted = impersonationRequest(req as IncomingMessage & { headersDistinct: Record<string, string[]> });
  if (wanted === undefined) return { actAs: identity };
  if (typeof wanted === 'string') return refusals.badImpersonation(wanted);
  let denied: string | undefined;
  try {
    denied = await check.denied(reviewer, route.cluster, identity, wanted);
  } catch (err) {
    return refusals.impersonationUnknown(route.cluster, identity.user, err as Error);
  }
  return denied ? refusals.impersonationDenied(denied) : { actAs: wanted };
}
