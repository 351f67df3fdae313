import { Duration, RemovalPolicy, Stack, Token, Validations } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { BlueGreenService } from './blue-green-service';
import type { WorkerConfig } from './config';
import { skipCheckov } from './checkov';
import { controllerDashboard, insights, ruleMetric } from './dashboard';
import { runbookLink } from './runbooks';

/** The namespace of the worker's Embedded Metric Format metrics unless told otherwise. */
export const DEFAULT_NAMESPACE = 'Bluegreen';

/** Properties of {@link BlueGreenController}. */
export interface BlueGreenControllerProps {
  /** Cluster the worker runs in. */
  readonly cluster: ecs.ICluster;
  /** The worker's image (built from `docker/Dockerfile`). */
  readonly image: ecs.ContainerImage;
  /** The services it deploys. */
  readonly services: BlueGreenService[];
  /** Principals (roles) allowed to put operator events on the bus. */
  readonly operators: iam.IRole[];
  /** Worker tasks; more than one share the queue under per-service leases. Default 2. */
  readonly workerCount?: number;
  /**
   * Prefix of the bus, dashboard and alarm names (`<prefix>-dead-letters`, …), so that two
   * controllers (staging and production) in one account and region do not collide.
   * Default: the stack's name.
   */
  readonly namePrefix?: string;
  /** Name of the custom bus for operator and outbound events. Default: the name prefix. */
  readonly eventBusName?: string;
  /** `source` of the worker's outbound events. Default `bluegreen`. */
  readonly source?: string;
  /** `source` of operator events. Default `bluegreen.manual`. */
  readonly manualSource?: string;
  /**
   * Receives before a message goes to the dead-letter queue. Default 15: with the worker's
   * back-off (doubling to a minute, at least half a lease for a busy service) a push or
   * an operator action survives minutes of throttling or contention before it is given up.
   */
  readonly maxReceiveCount?: number;
  /** EMF namespace. Default `Bluegreen`. */
  readonly metricsNamespace?: string;
  /** Subnets of the worker. Default: the cluster VPC's private subnets. */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Give the worker a public IP (public subnets without a NAT gateway). Default false. */
  readonly assignPublicIp?: boolean;
  /** Step lag that counts as a stuck deployment. Default 5 minutes. */
  readonly stuckAfter?: Duration;
  /** Age of the oldest queued message that alarms. Default 5 minutes. */
  readonly oldestMessageAge?: Duration;
  /** Days the worker's logs are kept. Default one month. */
  readonly logRetention?: logs.RetentionDays;
  /** The FireLens log router image. Default AWS for Fluent Bit from the public ECR gallery. */
  readonly logRouterImage?: string;
  /**
   * What pages: added as alarm and OK actions to every controller alarm and to each
   * service's "production served by nothing" alarm — not to the rollback alarms, which
   * fire by design and which the worker acts on. Default none (set one for production).
   */
  readonly alarmActions?: cloudwatch.IAlarmAction[];
  /**
   * A topic for the worker's own events (`Deployment Started`, `Succeeded`, `Rolled
   * Back`, `Failed`, `Weight Drift Detected`, `Event Rejected` and the rest, source
   * `source`): a rule on the bus delivers each to it. Default none.
   */
  readonly notificationTopic?: sns.ITopic;
  /**
   * Reconcile a service as soon as CloudTrail records a write to its production rule,
   * listener or colour services (`ModifyRule`, `DeleteRule`, `ModifyListener`,
   * `UpdateService`, `DeleteService` by anyone: a stack update, the console, a script),
   * instead of at the next reconciler pass. EventBridge delivers these events only
   * where a CloudTrail trail is logging management events in the region; the reconciler
   * stays the floor. Every such call in the account and region but the worker's own
   * reaches the queue (the worker ignores those of other resources). Default false.
   */
  readonly reconcileOnRecordedChanges?: boolean;
}

/**
 * Why the worker's and operators' roles hold some actions on "*": AWS offers no
 * resource-level permission for them, or (DescribeAlarms) answers composite alarms only to
 * a permission scoped to "*".
 */
export const UNSCOPED_REASON =
  'elasticloadbalancing:Describe{Rules,Listeners,TargetHealth} and ecs:{Register,Describe,List}TaskDefinition(s) support no resource-level permission; ' +
  'cloudwatch:DescribeAlarms returns composite alarms (the rollback alarms) only when scoped to * (CloudWatch API reference, DescribeAlarms)';

/**
 * The worker's image from a registry reference. An Amazon ECR reference
 * (`ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG` or `…@sha256:…`) becomes an ECR
 * image, so the task's execution role is granted the pull (`ecr:GetAuthorizationToken`,
 * `BatchGetImage`, `GetDownloadUrlForLayer`, `BatchCheckLayerAvailability`); any other
 * reference is pulled as a public registry image.
 */
export function workerImage(scope: Construct, reference: string): ecs.ContainerImage {
  const ecrReference = /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([a-z0-9._\/-]+)(?::([\w][\w.-]{0,127}))?(?:@(sha256:[0-9a-f]{64}))?$/;
  const m = ecrReference.exec(reference);
  if (!m) return ecs.ContainerImage.fromRegistry(reference);
  const [, account, region, name, tag, digest] = m;
  if (!tag && !digest) throw new Error(`the worker image ${reference} names no tag or digest`);
  const partition = reference.includes('.amazonaws.com.cn/') ? 'aws-cn' : 'aws';
  const repository = ecr.Repository.fromRepositoryAttributes(scope, 'WorkerRepository', {
    repositoryArn: `arn:${partition}:ecr:${region}:${account}:repository/${name}`,
    repositoryName: name,
  });
  return ecs.ContainerImage.fromEcrRepository(repository, digest ?? tag);
}

/** The log router that carries EMF to CloudWatch Logs with the `json/emf` format. */
export const DEFAULT_LOG_ROUTER_IMAGE = 'public.ecr.aws/aws-observability/aws-for-fluent-bit:stable';

/** Visibility timeout the worker keeps extending (`worker.rs`: 60 s, renewed every 20 s). */
export const WORKER_VISIBILITY = Duration.seconds(60);
/** Time ECS gives the worker between SIGTERM and SIGKILL. */
export const WORKER_STOP_TIMEOUT = Duration.seconds(60);

/** The calls whose CloudTrail records reconcile a service at once (`reconcileOnRecordedChanges`). */
export const RECORDED_CHANGES = ['ModifyRule', 'DeleteRule', 'ModifyListener', 'UpdateService', 'DeleteService'] as const;

/**
 * The worker container's health check: `bluegreen health` asks the worker over loopback
 * (nothing on the read-only root). It fails when the worker's loop made no progress for
 * longer than a receive and a message can take, when every receive failed for 5 minutes,
 * or when the process does not answer in 3 s; ECS then replaces the task (and the
 * circuit breaker rolls back a worker release whose tasks never get healthy).
 */
export const WORKER_HEALTH_CHECK: ecs.HealthCheck = {
  command: ['CMD', '/usr/local/bin/bluegreen', 'health', '--timeout', '3s'],
  interval: Duration.seconds(30),
  timeout: Duration.seconds(5),
  retries: 3,
  startPeriod: Duration.seconds(60),
};

/**
 * The controller: the worker as a Fargate service, its queue and dead-letter queue, its
 * table, the event bus and the rules that feed the queue, least-privilege IAM, the
 * controller alarms and the dashboard.
 */
export class BlueGreenController extends Construct {
  /** The input queue. */
  public readonly queue: sqs.Queue;
  /** Its dead-letter queue. */
  public readonly deadLetterQueue: sqs.Queue;
  /** Deployment state. */
  public readonly table: dynamodb.Table;
  /** Operator and outbound events. */
  public readonly bus: events.EventBus;
  /** The worker's service. */
  public readonly service: ecs.FargateService;
  /** The worker's task definition. */
  public readonly taskDefinition: ecs.FargateTaskDefinition;
  /** The worker's logs. */
  public readonly logGroup: logs.LogGroup;
  /** The configuration injected as `BLUEGREEN_CONFIG_JSON` (tokens unresolved). */
  public readonly config: WorkerConfig;
  /** Where EventBridge puts an event it could not deliver to the queue (after its retries). */
  public readonly undeliveredEvents: sqs.Queue;
  /** The rules that feed the queue: ECR pushes, rollback alarm changes, operator events. */
  public readonly rules: events.Rule[];
  /** The controller's own alarms. */
  public readonly alarms: Record<
    | 'deadLetters'
    | 'oldestMessage'
    | 'workerErrors'
    | 'workerNotRunning'
    | 'stuck'
    | 'drift'
    | 'failed'
    | 'undelivered'
    | 'failedInvocations'
    | 'workerDegraded'
    | 'capacityDrift',
    cloudwatch.Alarm
  >;
  /** The dashboard. */
  public readonly dashboard: cloudwatch.Dashboard;
  /** `source` of operator events. */
  private readonly manualSource: string;
  /** `source` of the worker's events. */
  private readonly source: string;

  constructor(scope: Construct, id: string, props: BlueGreenControllerProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const namespace = props.metricsNamespace ?? DEFAULT_NAMESPACE;
    const source = props.source ?? 'bluegreen';
    const manualSource = props.manualSource ?? 'bluegreen.manual';
    if (props.services.length === 0) throw new Error('a controller needs at least one service');
    const workerCount = props.workerCount ?? 2;
    const names = props.services.map((s) => s.serviceName);
    if (new Set(names).size !== names.length) throw new Error(`service names repeat: ${names.join(', ')}`);

    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetters', {
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    this.queue = new sqs.Queue(this, 'Events', {
      visibilityTimeout: WORKER_VISIBILITY,
      retentionPeriod: Duration.days(4),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: props.maxReceiveCount ?? 15 },
    });
    // EventBridge retries a delivery it could not make (a queue policy broken by a later
    // change, a key the service cannot use) for a day, then drops it — the push, the alarm
    // change or the operator action would be lost without a trace. Kept here instead.
    this.undeliveredEvents = new sqs.Queue(this, 'UndeliveredEvents', {
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    Validations.of(this.undeliveredEvents).acknowledge({
      id: 'AwsSolutions-SQS3',
      reason: 'It is a dead-letter queue: of the EventBridge targets that deliver to the worker queue',
    });
    for (const q of [this.queue, this.deadLetterQueue, this.undeliveredEvents]) {
      skipCheckov(q, 'CKV_AWS_27', 'SQS-managed SSE encrypts at rest; EventBridge cannot deliver to a queue under the AWS-managed KMS key, and a customer key adds cost with no gain here');
    }

    this.table = new dynamodb.Table(this, 'Deployments', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveAttribute: 'expires_at',
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    skipCheckov(this.table, 'CKV_AWS_119', 'Encrypted at rest with the AWS-managed key; the table holds deployment progress, no customer data, so a customer key would add cost and a key policy to manage for no gain');

    const prefix = props.namePrefix ?? stack.stackName;
    this.bus = new events.EventBus(this, 'Bus', { eventBusName: props.eventBusName ?? prefix });

    const workerRole = new iam.Role(this, 'WorkerRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'bluegreen worker: queue, table, bus, and only the registered services, rules and alarms',
    });
    this.manualSource = manualSource;
    this.source = source;
    this.operatorPolicy(props.operators, manualSource, source, workerRole);

    // AWS service events arrive on the default bus; operator events on ours.
    const defaultBus = events.EventBus.fromEventBusName(this, 'DefaultBus', 'default');
    const toQueue = new targets.SqsQueue(this.queue, {
      deadLetterQueue: this.undeliveredEvents,
      retryAttempts: 185,
      maxEventAge: Duration.hours(24),
    });
    const pushes = new events.Rule(this, 'EcrPushes', {
      eventBus: defaultBus,
      description: 'Successful ECR pushes to the registered repositories',
      eventPattern: {
        source: ['aws.ecr'],
        detailType: ['ECR Image Action'],
        detail: {
          'action-type': ['PUSH'],
          result: ['SUCCESS'],
          'repository-name': props.services.map((s) => s.repository.repositoryName),
        },
      },
      targets: [toQueue],
    });
    const rollbackAlarms = props.services.flatMap((s) => s.alarms().filter((a) => a instanceof cloudwatch.CompositeAlarm));
    const alarmChanges = new events.Rule(this, 'RollbackAlarms', {
      eventBus: defaultBus,
      description: 'State changes of the services rollback alarms',
      eventPattern: {
        source: ['aws.cloudwatch'],
        detailType: ['CloudWatch Alarm State Change'],
        resources: rollbackAlarms.map((a) => a.alarmArn),
      },
      targets: [toQueue],
    });
    const operatorEvents = new events.Rule(this, 'OperatorEvents', {
      eventBus: this.bus,
      description: 'Operator actions (deploy, promote, pause, resume, abort, rollback, retry, approve)',
      eventPattern: { source: [manualSource] },
      targets: [toQueue],
    });
    this.rules = [pushes, alarmChanges, operatorEvents];
    if (props.reconcileOnRecordedChanges) {
      this.rules.push(
        new events.Rule(this, 'RecordedChanges', {
          eventBus: defaultBus,
          description: 'Writes to load balancer rules and listeners and to ECS services, recorded by CloudTrail: the worker reconciles the service they concern at once',
          eventPattern: {
            source: ['aws.elasticloadbalancing', 'aws.ecs'],
            detailType: ['AWS API Call via CloudTrail'],
            detail: {
              eventSource: ['elasticloadbalancing.amazonaws.com', 'ecs.amazonaws.com'],
              eventName: [...RECORDED_CHANGES],
              // Not the worker's own writes: each step would come back as a reconcile
              // that takes the service's lease during the deployment.
              $or: [
                { userIdentity: { type: [{ 'anything-but': 'AssumedRole' }] } },
                { userIdentity: { sessionContext: { sessionIssuer: { arn: [{ 'anything-but': workerRole.roleArn }] } } } },
              ],
            },
          },
          targets: [toQueue],
        }),
      );
    }
    if (props.notificationTopic) {
      new events.Rule(this, 'Notifications', {
        eventBus: this.bus,
        description: 'The worker events, to the notification topic',
        eventPattern: { source: [source] },
        targets: [new targets.SnsTopic(props.notificationTopic)],
      });
    }

    this.config = {
      worker: {
        queue_url: this.queue.queueUrl,
        table: this.table.tableName,
        event_bus: this.bus.eventBusName,
        source,
        manual_source: manualSource,
        region: stack.region,
        account_id: stack.account,
      },
      services: props.services.map((s) => s.entry),
    };

    this.logGroup = new logs.LogGroup(this, 'Logs', {
      retention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    skipCheckov(this.logGroup, 'CKV_AWS_158', 'The logs hold no secrets; CloudWatch Logs encrypts them at rest by default');
    this.taskDefinition = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: 256,
      memoryLimitMiB: 512,
      taskRole: workerRole,
      runtimePlatform: { cpuArchitecture: ecs.CpuArchitecture.X86_64, operatingSystemFamily: ecs.OperatingSystemFamily.LINUX },
    });
    // CloudWatch Logs extracts metrics from EMF lines only when they arrive with the
    // `json/emf` log format, which the awslogs driver does not set: a FireLens (Fluent Bit)
    // router sends the worker's stdout (EMF) and stderr (JSON logs) with it.
    this.taskDefinition.addFirelensLogRouter('log-router', {
      image: ecs.ContainerImage.fromRegistry(props.logRouterImage ?? DEFAULT_LOG_ROUTER_IMAGE),
      firelensConfig: { type: ecs.FirelensLogRouterType.FLUENTBIT },
      essential: true,
      memoryReservationMiB: 50,
      logging: ecs.LogDrivers.awsLogs({ logGroup: this.logGroup, streamPrefix: 'log-router' }),
    });
    this.taskDefinition.addContainer('worker', {
      image: props.image,
      command: ['worker'],
      readonlyRootFilesystem: true,
      stopTimeout: WORKER_STOP_TIMEOUT,
      healthCheck: WORKER_HEALTH_CHECK,
      environment: {
        BLUEGREEN_CONFIG_JSON: stack.toJsonString(this.config),
        BLUEGREEN_METRICS_NAMESPACE: namespace,
        BLUEGREEN_LOG: 'info',
      },
      logging: ecs.LogDrivers.firelens({
        options: {
          Name: 'cloudwatch_logs',
          region: stack.region,
          log_group_name: this.logGroup.logGroupName,
          log_stream_prefix: 'worker/',
          auto_create_group: 'false',
          log_key: 'log',
          log_format: 'json/emf',
        },
      }),
    });
    this.logGroup.grantWrite(workerRole);
    this.service = new ecs.FargateService(this, 'Worker', {
      cluster: props.cluster,
      taskDefinition: this.taskDefinition,
      desiredCount: workerCount,
      minHealthyPercent: 50,
      maxHealthyPercent: 200,
      vpcSubnets: props.vpcSubnets,
      assignPublicIp: props.assignPublicIp ?? false,
      circuitBreaker: { enable: true, rollback: true },
    });

    this.grant(workerRole, props.services);
    const wildcard = 'AwsSolutions-IAM5[Resource::*]';
    const shown = (value: string, token: string) => (Token.isUnresolved(value) ? `<${token}>` : value);
    for (const family of new Set(props.services.map((s) => s.taskDefinitionFamily))) {
      Validations.of(workerRole).acknowledge({
        id: `AwsSolutions-IAM5[Resource::arn:${shown(stack.partition, 'AWS::Partition')}:ecs:${shown(stack.region, 'AWS::Region')}:${shown(stack.account, 'AWS::AccountId')}:task-definition/${family}:*]`,
        reason: 'Every revision of the service family: the worker registers a new one per deployment and may tag it only while registering it',
      });
    }
    Validations.of(workerRole).acknowledge({
      id: wildcard,
      reason: UNSCOPED_REASON,
    });
    if (this.taskDefinition.executionRole && (props.image instanceof ecs.EcrImage || props.image instanceof ecs.AssetImage)) {
      Validations.of(this.taskDefinition.executionRole).acknowledge({
        id: wildcard,
        reason: 'ecr:GetAuthorizationToken supports no resource-level permission (the grant CDK makes for pulling the image)',
      });
    }

    // Worker errors: the JSON log lines at level ERROR.
    const workerErrors = new logs.MetricFilter(this, 'ErrorLines', {
      logGroup: this.logGroup,
      filterPattern: logs.FilterPattern.stringValue('$.level', '=', 'ERROR'),
      metricNamespace: namespace,
      metricName: 'WorkerErrors',
      metricValue: '1',
      defaultValue: 0,
    }).metric({ statistic: 'Sum', period: Duration.minutes(5) });
    const emf = (metricName: string, statistic: string, period = Duration.minutes(1)) =>
      new cloudwatch.Metric({ namespace, metricName, statistic, period });
    const alarm = (
      key: string,
      name: string,
      description: string,
      metric: cloudwatch.IMetric,
      threshold: number,
      comparisonOperator: cloudwatch.ComparisonOperator,
      treatMissingData: cloudwatch.TreatMissingData,
      runbook = name,
    ) =>
      new cloudwatch.Alarm(this, key, {
        alarmName: `${prefix}-${name}`,
        alarmDescription: `${description} ${runbookLink(this, `bluegreen-${runbook}`)}`,
        metric,
        threshold,
        comparisonOperator,
        evaluationPeriods: 1,
        treatMissingData,
      });
    const GT = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD;
    const NB = cloudwatch.TreatMissingData.NOT_BREACHING;
    const stuckAfter = props.stuckAfter ?? Duration.minutes(5);
    const oldest = props.oldestMessageAge ?? Duration.minutes(5);
    this.alarms = {
      deadLetters: alarm(
        'DeadLettersAlarm',
        'dead-letters',
        'Messages in the dead-letter queue: inputs the worker refused or could not handle.',
        this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }),
        0,
        GT,
        NB,
      ),
      oldestMessage: alarm(
        'OldestMessageAlarm',
        'oldest-message',
        `A message has waited more than ${oldest.toSeconds()} s in the queue: the worker is behind or not consuming.`,
        this.queue.metricApproximateAgeOfOldestMessage({ period: Duration.minutes(1), statistic: 'Maximum' }),
        oldest.toSeconds(),
        GT,
        NB,
      ),
      workerErrors: alarm(
        'WorkerErrorsAlarm',
        'worker-errors',
        'The worker logged errors (level ERROR) in the last 5 minutes.',
        workerErrors,
        0,
        GT,
        NB,
      ),
      workerNotRunning: alarm(
        'WorkerNotRunningAlarm',
        'worker-not-running',
        'No worker task reported CPU for 5 minutes: nothing consumes the queue.',
        this.service.metricCpuUtilization({ period: Duration.minutes(5), statistic: 'SampleCount' }),
        1,
        cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        cloudwatch.TreatMissingData.BREACHING,
      ),
      stuck: alarm(
        'StuckAlarm',
        'deployment-stuck',
        `A deployment step ran more than ${stuckAfter.toSeconds()} s after it was due (StepLag).`,
        emf('StepLag', 'Maximum'),
        stuckAfter.toMilliseconds(),
        GT,
        NB,
      ),
      drift: alarm(
        'DriftAlarm',
        'weight-drift',
        'Production weights differed from the ones the worker wrote (WeightDrift).',
        emf('WeightDrift', 'Sum'),
        0,
        GT,
        NB,
      ),
      capacityDrift: alarm(
        'CapacityDriftAlarm',
        'capacity-drift',
        'A live colour ran another task definition, fewer tasks than its minimum, or no healthy target (CapacityDrift).',
        emf('CapacityDrift', 'Sum'),
        0,
        GT,
        NB,
      ),
      failed: alarm(
        'FailedAlarm',
        'deployment-failed',
        'A deployment ended Failed: even its rollback could not complete, or its start was refused.',
        emf('DeploymentsFailed', 'Sum'),
        0,
        GT,
        NB,
      ),
      undelivered: alarm(
        'UndeliveredAlarm',
        'undelivered-events',
        'EventBridge could not deliver events to the worker queue: pushes, alarm changes or operator actions wait in the undelivered-events queue.',
        this.undeliveredEvents.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }),
        0,
        GT,
        NB,
      ),
      failedInvocations: alarm(
        'FailedInvocationsAlarm',
        'failed-invocations',
        'EventBridge failed to deliver events to the worker queue (FailedInvocations of its rules).',
        new cloudwatch.MathExpression({
          expression: this.rules.map((_, i) => `FILL(f${i}, 0)`).join(' + '),
          usingMetrics: Object.fromEntries(
            this.rules.map((r, i) => [`f${i}`, ruleMetric(r, 'FailedInvocations')]),
          ),
          label: 'failed invocations',
          period: Duration.minutes(1),
        }),
        0,
        GT,
        NB,
        'undelivered-events',
      ),
      workerDegraded: new cloudwatch.Alarm(this, 'WorkerDegradedAlarm', {
        alarmName: `${prefix}-worker-degraded`,
        alarmDescription: `Fewer worker tasks running than the ${workerCount} asked for, for 5 minutes: one more failure and nothing consumes the queue (Container Insights; without it the alarm has no data). ${runbookLink(this, 'bluegreen-worker-not-running')}`,
        metric: insights(props.cluster, this.service.serviceName, 'RunningTaskCount').with({ statistic: 'Minimum' }),
        threshold: workerCount,
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        evaluationPeriods: 5,
        datapointsToAlarm: 5,
        treatMissingData: NB,
      }),
    };
    const actions = props.alarmActions ?? [];
    for (const a of [...Object.values(this.alarms), ...props.services.map((s) => s.servedByNothing)]) {
      a.addAlarmAction(...actions);
      a.addOkAction(...actions);
    }

    this.dashboard = controllerDashboard(this, {
      namespace,
      name: prefix,
      services: props.services,
      queue: this.queue,
      deadLetterQueue: this.deadLetterQueue,
      controllerAlarms: Object.values(this.alarms),
      workerErrors,
      worker: this.service,
      table: this.table,
      rules: this.rules,
    });
  }

  /**
   * Lets `role` run the operator commands: put operator events on the bus, and read what
   * `bluegreen status`, `history` and `watch` show (the table, the rules, the alarms).
   * `_services` is no longer needed (alarms are read on "*") and is kept for callers
   * written against earlier versions.
   */
  public grantOperator(role: iam.IGrantable, _services?: BlueGreenService[]): void {
    // Operator events only: the bus's policy refuses them anyone not named, and this
    // identity grant allows no other source.
    iam.Grant.addToPrincipal({
      grantee: role,
      actions: ['events:PutEvents'],
      resourceArns: [this.bus.eventBusArn],
      conditions: { StringEquals: { 'events:source': this.manualSource } },
    });
    this.table.grant(role, 'dynamodb:GetItem');
    // Composite alarms (the rollback alarms) are returned only to a DescribeAlarms
    // permission scoped to "*"; ELBv2 Describe* support no resource-level permissions.
    iam.Grant.addToPrincipal({
      grantee: role,
      actions: ['cloudwatch:DescribeAlarms', 'elasticloadbalancing:DescribeRules', 'elasticloadbalancing:DescribeListeners'],
      resourceArns: ['*'],
    });
  }

  /**
   * The bus's resource policy: the named operators may put operator events; nobody else
   * may put an event with the operator source — not even the worker, which only reads
   * them — and nobody but the worker may put one with the worker's source, which
   * downstream consumers trust (explicit denies also bind principals of this account
   * whose own policies allow `events:PutEvents`).
   */
  private operatorPolicy(operators: iam.IRole[], manualSource: string, source: string, workerRole: iam.IRole) {
    if (operators.length === 0) throw new Error('name at least one operator role');
    const arns = operators.map((r) => r.roleArn);
    this.bus.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'OperatorsPutOperatorEvents',
        principals: operators.map((r) => new iam.ArnPrincipal(r.roleArn)),
        actions: ['events:PutEvents'],
        resources: [this.bus.eventBusArn],
        conditions: { StringEquals: { 'events:source': manualSource } },
      }),
    );
    this.bus.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'OnlyOperatorsPutOperatorEvents',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['events:PutEvents'],
        resources: [this.bus.eventBusArn],
        conditions: {
          StringEquals: { 'events:source': manualSource },
          ArnNotEquals: { 'aws:PrincipalArn': arns },
        },
      }),
    );
    this.bus.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'OnlyTheWorkerPutsWorkerEvents',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['events:PutEvents'],
        resources: [this.bus.eventBusArn],
        conditions: {
          StringEquals: { 'events:source': source },
          ArnNotEquals: { 'aws:PrincipalArn': workerRole.roleArn },
        },
      }),
    );
  }

  /** Least privilege: every statement names its resources unless AWS offers none. */
  private grant(role: iam.Role, services: BlueGreenService[]) {
    this.queue.grantConsumeMessages(role);
    this.queue.grantSendMessages(role); // its own delayed ticks
    this.table.grant(
      role,
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:Query',
      'dynamodb:ConditionCheckItem',
    );
    // TransactWriteItems has no IAM action of its own: each item is authorized by the
    // action above that it performs (PutItem, UpdateItem, DeleteItem, ConditionCheckItem).
    // Its own events only (source `source`): never an operator's.
    role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'PublishWorkerEvents',
        actions: ['events:PutEvents'],
        resources: [this.bus.eventBusArn],
        conditions: { StringEquals: { 'events:source': this.source } },
      }),
    );
    const add = (sid: string, actions: string[], resources: string[], conditions?: Record<string, unknown>) =>
      role.addToPolicy(new iam.PolicyStatement({ sid, actions, resources, conditions }));
    add(
      'MoveRegisteredRules',
      ['elasticloadbalancing:ModifyRule'],
      services.flatMap((s) => [
        ...s.productionRules.map((r) => r.listenerRuleArn),
        ...(s.testRule ? [s.testRule.listenerRuleArn] : []),
      ]),
    );
    // ELBv2 Describe* actions support no resource-level permissions.
    add('ReadRulesAndHealth', ['elasticloadbalancing:DescribeRules', 'elasticloadbalancing:DescribeListeners', 'elasticloadbalancing:DescribeTargetHealth'], ['*']);
    add('UpdateRegisteredServices', ['ecs:UpdateService', 'ecs:DescribeServices'], services.flatMap((s) => s.serviceArns()));
    // RegisterTaskDefinition, DescribeTaskDefinition and ListTaskDefinitions support no
    // resource-level permissions.
    add('DeriveTaskDefinitions', ['ecs:RegisterTaskDefinition', 'ecs:DescribeTaskDefinition', 'ecs:ListTaskDefinitions'], ['*']);
    // The worker tags each revision it registers with its deployment (found again after a
    // crash by ListTagsForResource); tagging is allowed only as part of the registration.
    const revisions = [...new Set(services.map((s) => s.taskDefinitionFamily))].map((family) =>
      Stack.of(this).formatArn({ service: 'ecs', resource: 'task-definition', resourceName: `${family}:*` }),
    );
    add('TagDerivedRevisions', ['ecs:TagResource'], revisions, { StringEquals: { 'ecs:CreateAction': 'RegisterTaskDefinition' } });
    add('FindDerivedRevisions', ['ecs:ListTagsForResource'], revisions);
    add(
      'PassServiceRoles',
      ['iam:PassRole'],
      [...new Set(services.flatMap((s) => s.passedRoles.map((r) => r.roleArn)))],
      { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
    );
    add('ResolveTags', ['ecr:DescribeImages'], services.map((s) => s.repository.repositoryArn));
    // DescribeAlarms returns composite alarms only to a permission scoped to "*" (AWS
    // CloudWatch API reference, DescribeAlarms); the rollback alarms are composites.
    add('ReadRollbackAlarms', ['cloudwatch:DescribeAlarms'], ['*']);
  }
}
