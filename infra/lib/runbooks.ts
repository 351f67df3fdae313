/**
 * Where alarm descriptions point: the runbook of each alarm lives in `runbooks/` of the
 * repository. Set the context value `bluegreen:runbookBaseUrl` (or the environment
 * variable BLUEGREEN_RUNBOOK_BASE_URL at synth time) to where your copy is browsable.
 */
export const DEFAULT_RUNBOOK_BASE = 'runbooks';

/** `Runbook: <base>/<name>.md`. */
export function runbookLink(name: string, base = process.env.BLUEGREEN_RUNBOOK_BASE_URL ?? DEFAULT_RUNBOOK_BASE): string {
  return `Runbook: ${base.replace(/\/+$/, '')}/${name}.md`;
}
