import { Annotations, Duration, Names, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { protect } from './guard';
import { runbookLink } from './runbooks';
import type { Concurrency, Drift, ServiceEntry, Strategy, Timeouts, Validation } from './config';

/** The two colours. Which one is live alternates: each deployment goes to the idle one. */
export const COLOURS = ['blue', 'green'] as const;
/** One of the two colours. */
export type Colour = (typeof COLOURS)[number];

/** Thresholds of the rollback alarms; each colour gets the same set. */
export interface RollbackAlarmProps {
  /**
   * Share of requests, in percent, answered with a target 5xx or lost to a target
   * connection error (`TargetConnectionErrorCount`: the load balancer could not reach a
   * target, and answered 502 itself), that rolls back. Default 5.
   */
  readonly errorRatePercent?: number;
  /** Requests per period below which neither the error share nor p99 is judged. Default 20. */
  readonly minimumRequests?: number;
  /** p99 `TargetResponseTime` that rolls back (judged only over `minimumRequests`). Default 1 s. */
  readonly p99Latency?: Duration;
  /**
   * Share of the colour's targets, in percent, that are unhealthy for
   * `unhealthyPeriods` periods in a row, that rolls back. Default 25: one flapping task of
   * fifty does not roll back, one of two does.
   */
  readonly unhealthyPercent?: number;
  /** Periods in a row the unhealthy share must breach. Default 2. */
  readonly unhealthyPeriods?: number;
  /** @deprecated Replaced by `unhealthyPercent` (an absolute count rolled back on one flapping task of fifty); refused at synth. */
  readonly unhealthyHosts?: number;
  /** Period of every alarm. Default 1 minute. */
  readonly period?: Duration;
  /** Periods that must breach for the error and latency alarms. Default 1: a rollback alarm acts on the first bad minute. */
  readonly evaluationPeriods?: number;
  /**
   * More alarms that roll back a deployment to a colour (an application metric, a
   * dependency): each is added to that colour's composite. Called once per colour.
   */
  readonly extra?: (colour: Colour, targetGroup: elbv2.ApplicationTargetGroup, service: ecs.FargateService) => cloudwatch.IAlarm[];
}

/** The target groups' health check (both colours). */
export interface HealthCheckProps {
  /** Path. Default `/healthz`. */
  readonly path?: string;
  /** Between checks. Default 10 s. */
  readonly interval?: Duration;
  /** Answer timeout. Default 5 s. */
  readonly timeout?: Duration;
  /** Passes to turn healthy. Default 2. */
  readonly healthyThreshold?: number;
  /** Failures to turn unhealthy. Default 2. */
  readonly unhealthyThreshold?: number;
  /** Time ECS ignores failing load balancer checks of a new task. Default 60 s. */
  readonly gracePeriod?: Duration;
}

/** The test listener: green only, reachable only from `allowFrom`. */
export interface TestListenerProps {
  /** Port of the test listener on the load balancer. */
  readonly port: number;
  /** Who may reach it (a VPC CIDR, a security group); never the world. */
  readonly allowFrom: ec2.IPeer;
}

/** A production listener rule (listener, priority and conditions). */
export interface ProductionRuleProps {
  /** Listener the rule is on. Default: the service's `listener`. */
  readonly listener?: elbv2.ApplicationListener;
  /** Rule priority on the listener. Default 100. */
  readonly priority?: number;
  /** Conditions. Default: path `/*`. */
  readonly conditions?: elbv2.ListenerCondition[];
}

/** Properties of {@link BlueGreenService}. */
export interface BlueGreenServiceProps {
  /** The service's name in the worker's configuration; ECS services are `<name>-blue` and `<name>-green`. */
  readonly serviceName: string;
  /**
   * Prefix of the alarm names (`<prefix>-<name>-<colour>-5xx`, …), so that two stacks
   * (staging and production) in one account and region do not collide. Default: the
   * stack's name.
   */
  readonly namePrefix?: string;
  /** Cluster both colours run in. */
  readonly cluster: ecs.ICluster;
  /** Load balancer of the production listener (and of the test listener, if any). */
  readonly loadBalancer: elbv2.ApplicationLoadBalancer;
  /** Production listener; the rule's weighted forward action is what the worker moves. */
  readonly listener: elbv2.ApplicationListener;
  /** The production rule. Give this or `productionRules`. Default: path `/*` at priority 100. */
  readonly productionRule?: ProductionRuleProps;
  /**
   * Several production rules (an HTTP and an HTTPS listener, a host and a path rule), all
   * forwarding to the two target groups; the worker moves them together, starts a
   * deployment only when they all serve one colour, and reports drift on each.
   */
  readonly productionRules?: ProductionRuleProps[];
  /** Optional test listener forwarding to the idle colour. */
  readonly testListener?: TestListenerProps;
  /** First task definition (both colours start on it; the worker derives the next ones). */
  readonly taskDefinition: ecs.FargateTaskDefinition;
  /** Container whose image the worker replaces. */
  readonly containerName: string;
  /** Port the container listens on. */
  readonly containerPort: number;
  /** Repository whose pushes deploy this service. */
  readonly repository: ecr.IRepository;
  /** Glob of tags that deploy; default any tag. */
  readonly tagPattern?: string;
  /**
   * Fewest tasks the live colour runs (the worker's `min_tasks`). Default 2. The colour
   * services carry no `DesiredCount`: CloudFormation would re-apply it on any update of
   * the service (a tag is enough) and scale a live colour down. At creation each colour
   * starts with one task (CloudFormation's default); the first deployment gives the new
   * colour `max(live count, desiredCount)` and the worker keeps the live colour at or
   * above it (capacity drift).
   */
  readonly desiredCount?: number;
  /** Health check path of both target groups. Default `/healthz` (or `healthCheck.path`). */
  readonly healthCheckPath?: string;
  /** Health check timings and the tasks' grace period. */
  readonly healthCheck?: HealthCheckProps;
  /** Deregistration delay of both target groups. Default 30 s. */
  readonly deregistrationDelay?: Duration;
  /** Subnets of the tasks. Default: the cluster VPC's private subnets. */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Give tasks a public IP (public subnets without a NAT gateway). Default false. */
  readonly assignPublicIp?: boolean;
  /**
   * How traffic moves. Default linear 20 % every 3 minutes: each step holds longer than the
   * rollback alarms take to see it (the load balancer's metrics arrive about a minute late,
   * then a period must breach), so no step is taken before the last one was judged.
   */
  readonly strategy?: Strategy;
  /** Time at 100 % before finalizing. Default 5 minutes. */
  readonly bake?: Duration;
  /** Time the old colour stays warm after success; at least the deregistration delay. Default 10 minutes. */
  readonly terminationWait?: Duration;
  /** Wait for `approve` before shifting. Default false. */
  readonly approval?: boolean;
  /** A push while a deployment is active. Default `queue`. */
  readonly concurrency?: Concurrency;
  /** Answer to weights someone else wrote. Default `reassert`. */
  readonly drift?: Drift;
  /** Checks against the test listener before shifting. */
  readonly validations?: Validation[];
  /** Rollback alarm thresholds. */
  readonly alarms?: RollbackAlarmProps;
  /** Phase timeouts and the poll interval (`timeouts` of the configuration), e.g. `{ poll: '5s' }`. */
  readonly timeouts?: Timeouts;
}

/** The resources of one colour. */
export interface ColourResources {
  /** Target group (IP targets). */
  readonly targetGroup: elbv2.ApplicationTargetGroup;
  /** Fargate service. */
  readonly service: ecs.FargateService;
  /** Target 5xx rate (metric math with a minimum-request guard). */
  readonly errorRate: cloudwatch.Alarm;
  /** p99 target response time. */
  readonly latency: cloudwatch.Alarm;
  /** Unhealthy hosts. */
  readonly unhealthy: cloudwatch.Alarm;
  /** `anyOf` the three: the alarm the worker watches. */
  readonly rollback: cloudwatch.CompositeAlarm;
}

/**
 * Blue-green for one application service: two target groups and two Fargate services,
 * a production rule forwarding 100/0 by weight that the worker moves, an optional test
 * listener, and per colour the rollback alarms the worker watches.
 *
 * Each deployment goes to the idle colour, so both colours carry the same alarms and both
 * composites are rollback alarms; `entry` is this service's block of the worker's
 * configuration.
 */
export class BlueGreenService extends Construct {
  /** The service's name in the worker's configuration. */
  public readonly serviceName: string;
  /** `<namePrefix>-<serviceName>`: what this service's alarm names start with. */
  public readonly alarmPrefix: string;
  /** Blue and green. */
  public readonly colours: Record<Colour, ColourResources>;
  /** The production rule (the first, when there are several). */
  public readonly productionRule: elbv2.ApplicationListenerRule;
  /**
   * Production served by nothing: no healthy target in either colour (missing data
   * breaches: a target group without targets publishes nothing). Not a rollback alarm —
   * rolling back cannot help when the known-good colour is empty too; it pages (the
   * controller adds its `alarmActions`).
   */
  public readonly servedByNothing: cloudwatch.Alarm;
  /** Every production rule, in the order the worker reads and writes them. */
  public readonly productionRules: elbv2.ApplicationListenerRule[];
  /** The test listener's rule, if any. */
  public readonly testRule?: elbv2.ApplicationListenerRule;
  /** The test listener, if any. */
  public readonly testListener?: elbv2.ApplicationListener;
  /** The production listener. */
  public readonly listener: elbv2.ApplicationListener;
  /** The load balancer. */
  public readonly loadBalancer: elbv2.ApplicationLoadBalancer;
  /** The repository whose pushes deploy. */
  public readonly repository: ecr.IRepository;
  /** Task role and execution role the worker passes to ECS when it registers a task definition. */
  public readonly passedRoles: iam.IRole[];
  /** The cluster. */
  public readonly cluster: ecs.ICluster;
  /** The task definition family the worker registers new revisions in. */
  public readonly taskDefinitionFamily: string;
  /** This service's entry in the worker's configuration (`services[]`). */
  public readonly entry: ServiceEntry;

  constructor(scope: Construct, id: string, props: BlueGreenServiceProps) {
    super(scope, id);
    const name = props.serviceName;
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(name)) {
      throw new Error(`serviceName ${JSON.stringify(name)} must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`);
    }
    this.serviceName = name;
    const prefix = props.namePrefix ?? Stack.of(this).stackName;
    this.alarmPrefix = `${prefix}-${name}`;
    this.listener = props.listener;
    this.loadBalancer = props.loadBalancer;
    this.repository = props.repository;
    this.cluster = props.cluster;
    this.taskDefinitionFamily = props.taskDefinition.family;
    const vpc = props.cluster.vpc;
    const deregistrationDelay = props.deregistrationDelay ?? Duration.seconds(30);
    const terminationWait = props.terminationWait ?? Duration.minutes(10);
    if (terminationWait.toSeconds() < deregistrationDelay.toSeconds()) {
      throw new Error('terminationWait must be at least the deregistration delay');
    }

    const make = (colour: Colour): Omit<ColourResources, 'errorRate' | 'latency' | 'unhealthy' | 'rollback'> => {
      const cap = colour === 'blue' ? 'Blue' : 'Green';
      const targetGroup = new elbv2.ApplicationTargetGroup(this, `${cap}TargetGroup`, {
        vpc,
        port: props.containerPort,
        protocol: elbv2.ApplicationProtocol.HTTP,
        targetType: elbv2.TargetType.IP,
        deregistrationDelay,
        healthCheck: {
          path: props.healthCheck?.path ?? props.healthCheckPath ?? '/healthz',
          healthyHttpCodes: '200',
          interval: props.healthCheck?.interval ?? Duration.seconds(10),
          timeout: props.healthCheck?.timeout ?? Duration.seconds(5),
          healthyThresholdCount: props.healthCheck?.healthyThreshold ?? 2,
          unhealthyThresholdCount: props.healthCheck?.unhealthyThreshold ?? 2,
        },
      });
      const service = new ecs.FargateService(this, `${cap}Service`, {
        cluster: props.cluster,
        serviceName: `${name}-${colour}`,
        taskDefinition: props.taskDefinition,
        // No DesiredCount (with @aws-cdk/aws-ecs:removeDefaultDesiredCount): the worker
        // owns the counts, and an update of this resource never changes them.
        minHealthyPercent: 100,
        maxHealthyPercent: 200,
        vpcSubnets: props.vpcSubnets,
        assignPublicIp: props.assignPublicIp ?? false,
        circuitBreaker: { enable: true, rollback: false },
        healthCheckGracePeriod: props.healthCheck?.gracePeriod ?? Duration.seconds(60),
      });
      protect(service, 'colour-service');
      service.attachToApplicationTargetGroup(targetGroup);
      service.connections.allowFrom(props.loadBalancer, ec2.Port.tcp(props.containerPort), 'from the load balancer');
      return { targetGroup, service };
    };
    const blue = make('blue');
    const green = make('green');

    if (props.productionRule && props.productionRules) {
      throw new Error(`${name}: give productionRule or productionRules, not both`);
    }
    const rules = props.productionRules ?? [props.productionRule ?? {}];
    if (rules.length === 0) {
      throw new Error(`${name}: productionRules needs at least one rule`);
    }
    this.productionRules = rules.map(
      (rule, i) =>
        // The first keeps the id a single rule has, so adding a second replaces nothing.
        new elbv2.ApplicationListenerRule(this, i === 0 ? 'ProductionRule' : `ProductionRule${i + 1}`, {
          listener: rule.listener ?? props.listener,
          priority: rule.priority ?? 100 + i,
          conditions: rule.conditions ?? [elbv2.ListenerCondition.pathPatterns(['/*'])],
          // The worker moves these weights; a stack update that touches the rule writes
          // 100/0 again (infra/README.md: drift detection answers it).
          action: elbv2.ListenerAction.weightedForward([
            { targetGroup: blue.targetGroup, weight: 100 },
            { targetGroup: green.targetGroup, weight: 0 },
          ]),
        }),
    );
    this.productionRules.forEach((rule) => protect(rule, 'production-rule'));
    this.productionRule = this.productionRules[0];

    if (props.testListener) {
      const test = props.testListener;
      const testListener = (this.testListener = props.loadBalancer.addListener('TestListener' + Names.uniqueId(this).slice(-8), {
        port: test.port,
        protocol: elbv2.ApplicationProtocol.HTTP,
        open: false,
        defaultAction: elbv2.ListenerAction.fixedResponse(404, { contentType: 'text/plain', messageBody: 'no test route' }),
      }));
      props.loadBalancer.connections.allowFrom(test.allowFrom, ec2.Port.tcp(test.port), `${name} test listener`);
      this.testRule = new elbv2.ApplicationListenerRule(this, 'TestRule', {
        listener: testListener,
        priority: 1,
        conditions: [elbv2.ListenerCondition.pathPatterns(['/*'])],
        // The idle colour only; the worker points it at each deployment's new colour.
        action: elbv2.ListenerAction.weightedForward([
          { targetGroup: blue.targetGroup, weight: 0 },
          { targetGroup: green.targetGroup, weight: 100 },
        ]),
      });
    }

    const alarmsOf = (colour: Colour, made: { targetGroup: elbv2.ApplicationTargetGroup; service: ecs.FargateService }) =>
      rollbackAlarms(this, name, this.alarmPrefix, colour, made, props.alarms ?? {});
    this.colours = {
      blue: { ...blue, ...alarmsOf('blue', blue) },
      green: { ...green, ...alarmsOf('green', green) },
    };
    const strategy = props.strategy ?? { kind: 'linear', step_percent: 20, interval: '3m' };
    const hold = strategy.kind === 'linear' ? strategy.interval : strategy.kind === 'canary' ? strategy.bake : undefined;
    const detection = detectionTime(props.alarms ?? {});
    if (hold !== undefined && parseDuration(hold) < detection.toSeconds()) {
      Annotations.of(this).addWarningV2(
        'bluegreen:stepShorterThanAlarms',
        `${name}: a step holds ${hold}, less than the ${detection.toSeconds()} s the rollback alarms need to see it (metrics arrive about a minute late, then the periods that must breach): the next step is taken before the last one was judged`,
      );
    }

    const healthy = (c: ColourResources) => c.targetGroup.metrics.healthyHostCount({ period: Duration.minutes(1), statistic: 'Minimum' });
    this.servedByNothing = new cloudwatch.Alarm(this, 'ServedByNothing', {
      alarmName: `${this.alarmPrefix}-served-by-nothing`,
      alarmDescription: `No healthy target in ${name}-blue or ${name}-green: production is served by nothing. ${runbookLink(this, 'service-served-by-nothing')}`,
      metric: new cloudwatch.MathExpression({
        expression: 'FILL(b, 0) + FILL(g, 0)',
        usingMetrics: { b: healthy(this.colours.blue), g: healthy(this.colours.green) },
        period: Duration.minutes(1),
        label: `${name} healthy targets`,
      }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      evaluationPeriods: 2,
      datapointsToAlarm: 2,
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    });

    const roles = [props.taskDefinition.taskRole, props.taskDefinition.executionRole];
    this.passedRoles = roles.filter((r): r is NonNullable<typeof r> => r !== undefined);

    this.entry = {
      name,
      cluster: props.cluster.clusterArn,
      blue_service: blue.service.serviceName,
      green_service: green.service.serviceName,
      blue_target_group_arn: blue.targetGroup.targetGroupArn,
      green_target_group_arn: green.targetGroup.targetGroupArn,
      ...(this.productionRules.length === 1
        ? { production_listener_rule_arn: this.productionRule.listenerRuleArn }
        : { production_listener_rule_arns: this.productionRules.map((r) => r.listenerRuleArn) }),
      ...(this.testRule ? { test_listener_rule_arn: this.testRule.listenerRuleArn } : {}),
      container_name: props.containerName,
      ecr_repository: props.repository.repositoryName,
      ...(props.tagPattern ? { tag_pattern: props.tagPattern } : {}),
      strategy,
      bake: seconds(props.bake ?? Duration.minutes(5)),
      termination_wait: seconds(terminationWait),
      // Per colour: a deployment is gated and rolled back by its target colour's
      // composite only, so the live colour in ALARM never blocks the fix.
      rollback_alarms: {
        blue: [this.colours.blue.rollback.alarmName],
        green: [this.colours.green.rollback.alarmName],
      },
      approval: props.approval ?? false,
      concurrency: props.concurrency ?? 'queue',
      drift: props.drift ?? 'reassert',
      min_tasks: props.desiredCount ?? 2,
      ...(props.validations ? { validations: props.validations } : {}),
      ...(props.timeouts ? { timeouts: props.timeouts } : {}),
    };
  }

  /** ARNs of the ECS services of both colours. */
  public serviceArns(): string[] {
    return COLOURS.map((c) => this.colours[c].service.serviceArn);
  }

  /** Every alarm of this service (rollback children and composites, and served-by-nothing). */
  public alarms(): cloudwatch.IAlarm[] {
    return [
      ...COLOURS.flatMap((c) => {
        const r = this.colours[c];
        return [r.errorRate, r.latency, r.unhealthy, r.rollback];
      }),
      this.servedByNothing,
    ];
  }
}

/** How long the rollback alarms take to see a bad step: a minute of metric delay, then the periods that must breach. */
export function detectionTime(p: RollbackAlarmProps): Duration {
  const period = (p.period ?? Duration.minutes(1)).toSeconds();
  return Duration.seconds(60 + period * (p.evaluationPeriods ?? 1));
}

/** Seconds of a configuration duration (`"90s"`, `"3m"`, `"1h"`, `"500ms"`). */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) throw new Error(`not a duration: ${JSON.stringify(text)}`);
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Number(m[1]) * unit;
}

/** A duration as the configuration writes it (`"90s"`). */
export function seconds(d: Duration): string {
  return `${d.toSeconds()}s`;
}

function rollbackAlarms(
  scope: Construct,
  name: string,
  alarmPrefix: string,
  colour: Colour,
  made: { targetGroup: elbv2.ApplicationTargetGroup; service: ecs.FargateService },
  p: RollbackAlarmProps,
): Pick<ColourResources, 'errorRate' | 'latency' | 'unhealthy' | 'rollback'> {
  const { targetGroup } = made;
  const cap = colour === 'blue' ? 'Blue' : 'Green';
  const period = p.period ?? Duration.minutes(1);
  const evaluationPeriods = p.evaluationPeriods ?? 1;
  const minimum = p.minimumRequests ?? 20;
  const rate = p.errorRatePercent ?? 5;
  // ALB publishes nothing for a group without traffic: missing data is not a breach.
  const common = {
    evaluationPeriods,
    datapointsToAlarm: evaluationPeriods,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  };
  const requests = targetGroup.metrics.requestCount({ period, statistic: 'Sum' });
  const errors = targetGroup.metrics.httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, { period, statistic: 'Sum' });
  const unreachable = targetGroup.metrics.targetConnectionErrorCount({ period, statistic: 'Sum' });
  const errorRate = new cloudwatch.Alarm(scope, `${cap}ErrorRate`, {
    ...common,
    alarmName: `${alarmPrefix}-${colour}-5xx`,
    alarmDescription: `Target 5xx and connection errors above ${rate} % of at least ${minimum} requests a period on ${name}-${colour}. ${runbookLink(scope, 'service-colour-5xx')}`,
    metric: new cloudwatch.MathExpression({
      expression: `IF(FILL(requests, 0) >= ${minimum}, 100 * (FILL(errors, 0) + FILL(unreachable, 0)) / requests, 0)`,
      usingMetrics: { requests, errors, unreachable },
      period,
      label: `${name}-${colour} 5xx %`,
    }),
    threshold: rate,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
  });
  const latencyLimit = p.p99Latency ?? Duration.seconds(1);
  const latency = new cloudwatch.Alarm(scope, `${cap}Latency`, {
    ...common,
    alarmName: `${alarmPrefix}-${colour}-p99`,
    alarmDescription: `p99 target response time above ${latencyLimit.toSeconds()} s over at least ${minimum} requests a period on ${name}-${colour}. ${runbookLink(scope, 'service-colour-p99')}`,
    // One slow request of a trickle is no p99: judged only over enough requests.
    metric: new cloudwatch.MathExpression({
      expression: `IF(FILL(requests, 0) >= ${minimum}, FILL(p99, 0), 0)`,
      usingMetrics: { requests, p99: targetGroup.metrics.targetResponseTime({ period, statistic: 'p99' }) },
      period,
      label: `${name}-${colour} p99 (s)`,
    }),
    threshold: latencyLimit.toMilliseconds() / 1000,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
  });
  if (p.unhealthyHosts !== undefined) {
    throw new Error(`${name}: alarms.unhealthyHosts is replaced by alarms.unhealthyPercent (a share of the colour's targets, for unhealthyPeriods periods)`);
  }
  const share = p.unhealthyPercent ?? 25;
  const unhealthyPeriods = p.unhealthyPeriods ?? 2;
  const unhealthy = new cloudwatch.Alarm(scope, `${cap}Unhealthy`, {
    evaluationPeriods: unhealthyPeriods,
    datapointsToAlarm: unhealthyPeriods,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    alarmName: `${alarmPrefix}-${colour}-unhealthy`,
    alarmDescription: `${share} % or more of the targets of ${name}-${colour} unhealthy for ${unhealthyPeriods} periods in a row. ${runbookLink(scope, 'service-colour-unhealthy')}`,
    metric: new cloudwatch.MathExpression({
      expression: 'IF(FILL(healthy, 0) + FILL(unhealthy, 0) > 0, 100 * FILL(unhealthy, 0) / (FILL(healthy, 0) + FILL(unhealthy, 0)), 0)',
      usingMetrics: {
        healthy: targetGroup.metrics.healthyHostCount({ period, statistic: 'Minimum' }),
        unhealthy: targetGroup.metrics.unhealthyHostCount({ period, statistic: 'Maximum' }),
      },
      period,
      label: `${name}-${colour} unhealthy %`,
    }),
    threshold: share,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
  });
  const extra = p.extra?.(colour, targetGroup, made.service) ?? [];
  const rollback = new cloudwatch.CompositeAlarm(scope, `${cap}Rollback`, {
    compositeAlarmName: `${alarmPrefix}-${colour}-rollback`,
    alarmDescription: `Any rollback alarm of ${name}-${colour}: the worker rolls back a deployment to this colour. ${runbookLink(scope, 'service-colour-rollback')}`,
    alarmRule: cloudwatch.AlarmRule.anyOf(errorRate, latency, unhealthy, ...extra),
  });
  return { errorRate, latency, unhealthy, rollback };
}
