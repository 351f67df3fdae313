/**
 * The production guard: a stack update must never move production. The worker owns the
 * colour services (task definition, count) and the production rules' weights once they
 * exist; CloudFormation re-applies a resource's whole template on any update of it (a tag
 * is enough), which would put the live colour back on the template's task definition or
 * the rule back on 100/0 blue. The reconciler undoes such a change within a pass (capacity
 * and weight drift); this guard keeps it from being made:
 *
 * - {@link ProductionGuard}, a synth-time validation plugin, compares the new templates
 *   with the deployed ones and fails the synth when a protected resource would be updated,
 *   replaced or deleted (directly, or because a resource it names is replaced: a changed
 *   task definition is a new revision that both colour services would roll to in place);
 * - {@link stackPolicy} is the CloudFormation stack policy that denies the same updates
 *   on the account, for stacks deployed by hand or by another pipeline.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CfnResource, type IPolicyValidationContext, type IPolicyValidationPlugin, type PolicyValidationPluginReport } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/** The metadata key that marks a protected resource, with its role as the value. */
export const PROTECTED = 'bluegreen:protected';

/** What a protected resource is to the worker. */
export type ProtectedRole = 'colour-service' | 'production-rule';

/** Marks the resource behind `construct` as one the guard and the stack policy protect. */
export function protect(construct: IConstruct, role: ProtectedRole): void {
  const resource = construct.node.defaultChild;
  if (!CfnResource.isCfnResource(resource)) {
    throw new Error(`${construct.node.path} has no CloudFormation resource to protect`);
  }
  resource.addMetadata(PROTECTED, role);
}

/** A template as read from disk (only what the guard reads). */
export interface TemplateDocument {
  readonly Resources?: Record<string, { Type: string; Properties?: unknown; Metadata?: Record<string, unknown> }>;
}

/** What CloudFormation would do to a protected resource. */
export interface ProtectedChange {
  /** The resource's logical id. */
  readonly logicalId: string;
  /** Its role. */
  readonly role: ProtectedRole;
  /** `update` in place, `replace` (a new physical resource) or `delete`. */
  readonly action: 'update' | 'replace' | 'delete';
  /** What changed: property names, or `<Property> (<logical id> replaced)` for a reference. */
  readonly because: string[];
}

/** Properties whose change makes CloudFormation replace a resource of the type. */
const REPLACING: Record<string, readonly string[]> = {
  'AWS::ECS::Service': ['Cluster', 'LaunchType', 'Role', 'SchedulingStrategy', 'ServiceName'],
  'AWS::ElasticLoadBalancingV2::ListenerRule': ['ListenerArn'],
  'AWS::ElasticLoadBalancingV2::TargetGroup': ['IpAddressType', 'Name', 'Port', 'Protocol', 'ProtocolVersion', 'TargetType', 'VpcId'],
  'AWS::ElasticLoadBalancingV2::Listener': ['LoadBalancerArn'],
};

/** Types whose every property but these is replacing (a task definition is immutable: a change is a new revision). */
const IMMUTABLE_BUT: Record<string, readonly string[]> = {
  'AWS::ECS::TaskDefinition': ['Tags'],
};

const canonical = (value: unknown): string =>
  JSON.stringify(value, (_, v) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b))) : v,
  );

type Resources = NonNullable<TemplateDocument['Resources']>;

/** The properties of `before` and `after` that differ, by name. */
function changedProperties(before: unknown, after: unknown): string[] {
  const b = (before ?? {}) as Record<string, unknown>;
  const a = (after ?? {}) as Record<string, unknown>;
  return [...new Set([...Object.keys(b), ...Object.keys(a)])].filter((k) => canonical(b[k]) !== canonical(a[k])).sort();
}

/** Whether CloudFormation would give `id` a new physical resource (so every `Ref`/`GetAtt` to it changes). */
function replaced(id: string, before: Resources, after: Resources): boolean {
  const b = before[id];
  const a = after[id];
  if (!b || !a) return b !== a;
  if (b.Type !== a.Type) return true;
  const changed = changedProperties(b.Properties, a.Properties);
  const keep = IMMUTABLE_BUT[a.Type];
  if (keep) return changed.some((p) => !keep.includes(p));
  return changed.some((p) => (REPLACING[a.Type] ?? []).includes(p));
}

/** The logical ids `value` names by `Ref`, `Fn::GetAtt` or `Fn::Sub`, with the top-level property they sit in. */
function references(properties: unknown): Array<{ property: string; id: string }> {
  const out: Array<{ property: string; id: string }> = [];
  const walk = (property: string, v: unknown): void => {
    if (Array.isArray(v)) return v.forEach((x) => walk(property, x));
    if (!v || typeof v !== 'object') return;
    for (const [k, x] of Object.entries(v)) {
      if (k === 'Ref' && typeof x === 'string') out.push({ property, id: x });
      else if (k === 'Fn::GetAtt' && Array.isArray(x) && typeof x[0] === 'string') out.push({ property, id: x[0] });
      else if (k === 'Fn::Sub') {
        const text = Array.isArray(x) ? x[0] : x;
        if (typeof text === 'string') for (const m of text.matchAll(/\$\{([A-Za-z0-9]+)[.}]/g)) out.push({ property, id: m[1] });
        walk(property, x);
      } else walk(property, x);
    }
  };
  for (const [property, v] of Object.entries((properties ?? {}) as Record<string, unknown>)) walk(property, v);
  return out;
}

/**
 * What deploying `after` over the deployed `before` would do to the protected resources of
 * `before` (a protected resource new in `after` is a creation, which moves nothing).
 */
export function protectedChanges(before: TemplateDocument, after: TemplateDocument): ProtectedChange[] {
  const b = before.Resources ?? {};
  const a = after.Resources ?? {};
  const changes: ProtectedChange[] = [];
  for (const [id, old] of Object.entries(b)) {
    const now = a[id];
    // A stack deployed before the marks existed has them only in the new template.
    const role = (old.Metadata?.[PROTECTED] ?? now?.Metadata?.[PROTECTED]) as ProtectedRole | undefined;
    if (!role) continue;
    if (!now) {
      changes.push({ logicalId: id, role, action: 'delete', because: ['removed from the template'] });
      continue;
    }
    const direct = changedProperties(old.Properties, now.Properties);
    const through = references(now.Properties)
      .filter(({ id: target }) => target in b && target in a && replaced(target, b, a))
      .map(({ property, id: target }) => `${property} (${target} replaced)`);
    const because = [...new Set([...direct, ...through])];
    if (old.Type !== now.Type) {
      changes.push({ logicalId: id, role, action: 'replace', because: ['Type'] });
    } else if (because.length > 0) {
      const replacing = direct.some((p) => (REPLACING[now.Type] ?? []).includes(p));
      changes.push({ logicalId: id, role, action: replacing ? 'replace' : 'update', because });
    }
  }
  return changes;
}

/** The context key that lets one synth update protected resources on purpose. */
export const ALLOW_CONTEXT = 'bluegreen:allowProductionUpdate';

/** Options of {@link ProductionGuard}. */
export interface ProductionGuardProps {
  /**
   * The deployed templates: a directory of `<StackName>.template.json` files (e.g. from
   * `aws cloudformation get-template --stack-name S --query TemplateBody`), or one file
   * when the app has one stack. A stack without a deployed template is new: nothing to guard.
   */
  readonly deployed: string;
  /** Report the changes as warnings instead of failing the synth. Default false. */
  readonly allow?: boolean;
}

/**
 * A synth-time validation plugin (`Validations.of(app).addPlugins(...)`): the synth fails
 * when the new templates would update, replace or delete a colour service or a production
 * rule of the deployed ones. `-c bluegreen:allowProductionUpdate=true` (see
 * {@link ALLOW_CONTEXT}) lets a deliberate change through, reported.
 */
export class ProductionGuard implements IPolicyValidationPlugin {
  /** The plugin's name in the validation report. */
  public readonly name = 'bluegreen-production-guard';
  /** The rule ids it reports. */
  public readonly ruleIds = ['protected-resource-changed'];
  private readonly props: ProductionGuardProps;

  constructor(props: ProductionGuardProps) {
    this.props = props;
  }

  /** Compares every stack's template with its deployed one. */
  public validate(context: IPolicyValidationContext): PolicyValidationPluginReport {
    const single = fs.statSync(this.props.deployed).isFile();
    if (single && context.stackTemplates.length !== 1) {
      throw new Error(`deployed template ${this.props.deployed} is one file, the app has ${context.stackTemplates.length} stacks: give a directory`);
    }
    const violations = context.stackTemplates.flatMap(({ templatePath }) => {
      const deployedPath = single ? this.props.deployed : path.join(this.props.deployed, path.basename(templatePath));
      if (!fs.existsSync(deployedPath)) return [];
      const before = JSON.parse(fs.readFileSync(deployedPath, 'utf8')) as TemplateDocument;
      const after = JSON.parse(fs.readFileSync(templatePath, 'utf8')) as TemplateDocument;
      return protectedChanges(before, after).map((c) => ({
        ruleName: 'protected-resource-changed',
        description: `this update would ${c.action} the ${c.role} ${c.logicalId} (${c.because.join(', ')}): CloudFormation re-applies the template's task definition or 100/0 weights over what the worker deployed, moving production in place, past every alarm and step`,
        fix: `deploy a new image or task definition through the worker (bluegreen deploy), leave the colour services and production rules out of tag aspects; for a deliberate change, synth with -c ${ALLOW_CONTEXT}=true during a quiet window (infra/README.md, "The production guard")`,
        violatingResources: [{ resourceLogicalId: c.logicalId, templatePath, locations: c.because.map((p) => `Properties/${p.split(' ')[0]}`) }],
      }));
    });
    return { success: this.props.allow === true || violations.length === 0, violations };
  }
}

/** A CloudFormation stack policy statement. */
interface PolicyStatement {
  readonly Effect: 'Allow' | 'Deny';
  readonly Principal: '*';
  readonly Action: string | string[];
  readonly Resource: string | string[];
}

/**
 * The stack policy for a synthesized template: every update allowed but a modification,
 * replacement or deletion of a protected resource (`aws cloudformation set-stack-policy
 * --stack-policy-body file://policy.json`; a deliberate change passes
 * `--stack-policy-during-update-body` with an allow). A replaced task definition is then
 * refused where the colour services would take it.
 */
export function stackPolicy(template: TemplateDocument): { Statement: PolicyStatement[] } {
  const protectedIds = Object.entries(template.Resources ?? {})
    .filter(([, r]) => r.Metadata?.[PROTECTED])
    .map(([id]) => `LogicalResourceId/${id}`)
    .sort();
  if (protectedIds.length === 0) throw new Error('the template has no protected resource (no BlueGreenService?)');
  return {
    Statement: [
      { Effect: 'Allow', Principal: '*', Action: 'Update:*', Resource: '*' },
      { Effect: 'Deny', Principal: '*', Action: ['Update:Modify', 'Update:Replace', 'Update:Delete'], Resource: protectedIds },
    ],
  };
}
