import { Annotations, Stack } from 'aws-cdk-lib';
import { Construct } from 'constructs';

/**
 * Where alarm descriptions point: the runbook of each alarm lives in `runbooks/` of the
 * repository. Set the context value `bluegreen:runbookBaseUrl` (in `cdk.json`, or `-c`;
 * the environment variable BLUEGREEN_RUNBOOK_BASE_URL at synth time also works) to where
 * your copy is browsable, so that the link in a page or the console can be followed.
 */
export const DEFAULT_RUNBOOK_BASE = 'runbooks';

const warned = new WeakSet<Stack>();

/** The context key of the runbooks' base URL. */
export const RUNBOOK_BASE_CONTEXT = 'bluegreen:runbookBaseUrl';

/**
 * `Runbook: <base>/<name>.md`, the base read from `scope`'s context. A base that is not an
 * absolute `https://` or `http://` URL is not a link anyone paged can follow: the stack gets
 * a warning once (`cdk deploy --strict` then refuses it).
 */
export function runbookLink(scope: Construct, name: string): string {
  const base = (scope.node.tryGetContext(RUNBOOK_BASE_CONTEXT) as string | undefined) ?? process.env.BLUEGREEN_RUNBOOK_BASE_URL ?? DEFAULT_RUNBOOK_BASE;
  const stack = Stack.of(scope);
  if (!/^https?:\/\/[^/]+/.test(base) && !warned.has(stack)) {
    warned.add(stack);
    Annotations.of(stack).addWarningV2(
      'bluegreen:runbookBaseUrl',
      `alarm descriptions link the runbooks as "${base}/<name>.md", which nobody paged can open: set the context value ${RUNBOOK_BASE_CONTEXT} to an absolute URL of your copy of runbooks/`,
    );
  }
  return `Runbook: ${base.replace(/\/+$/, '')}/${name}.md`;
}
