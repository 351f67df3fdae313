import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { BlueGreenService, COLOURS } from './blue-green-service';

/**
 * The phases in the order of the worker's `Phase` enum: the `Phase` metric is the index
 * in this list (a test compares it with the code).
 */
export const PHASES = [
  'Requested',
  'Provisioning',
  'WaitingForGreen',
  'Testing',
  'AwaitingApproval',
  'Shifting',
  'Baking',
  'Finalizing',
  'Succeeded',
  'RollingBack',
  'RolledBack',
  'Failed',
] as const;

/** What the dashboard shows. */
export interface DashboardProps {
  /** EMF namespace. */
  readonly namespace: string;
  /** The dashboard's name. */
  readonly name: string;
  /** Services, one row each. */
  readonly services: BlueGreenService[];
  /** Input queue. */
  readonly queue: sqs.IQueue;
  /** Dead-letter queue. */
  readonly deadLetterQueue: sqs.IQueue;
  /** The controller's alarms. */
  readonly controllerAlarms: cloudwatch.IAlarm[];
  /** The worker's error lines. */
  readonly workerErrors: cloudwatch.IMetric;
  /** The worker's service. */
  readonly worker: ecs.FargateService;
  /** The state table. */
  readonly table: dynamodb.ITable;
  /** The rules that feed the queue. */
  readonly rules: events.IRule[];
}

/** A Container Insights metric of an ECS service (the cluster must have Container Insights on), averaged per minute. */
export function insights(cluster: ecs.ICluster, serviceName: string, metricName: string, label?: string): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: 'ECS/ContainerInsights',
    metricName,
    dimensionsMap: { ClusterName: cluster.clusterName, ServiceName: serviceName },
    statistic: 'Average',
    period: PERIOD,
    label,
  });
}

/** An EventBridge rule's metric (`Invocations`, `FailedInvocations`), summed per minute. */
export function ruleMetric(rule: events.IRule, metricName: string, label?: string): cloudwatch.Metric {
  return new cloudwatch.Metric({
    namespace: 'AWS/Events',
    metricName,
    dimensionsMap: { RuleName: rule.ruleName },
    statistic: 'Sum',
    period: PERIOD,
    label,
  });
}

const PERIOD = Duration.minutes(1);
const WIDE = 12;
const THIRD = 8;
const HEIGHT = 6;

/**
 * One dashboard: a row of widgets per service (weights and phase, observed split, traffic
 * per colour, deployments, rollback latency), then the controller (queue, dead letters,
 * messages, errors, alarm status).
 */
export function controllerDashboard(scope: Construct, p: DashboardProps): cloudwatch.Dashboard {
  const emf = (metricName: string, statistic: string, dimensionsMap?: Record<string, string>, label?: string) =>
    new cloudwatch.Metric({ namespace: p.namespace, metricName, statistic, period: PERIOD, dimensionsMap, label });
  const dashboard = new cloudwatch.Dashboard(scope, 'Dashboard', {
    dashboardName: p.name,
    defaultInterval: Duration.hours(3),
  });

  for (const s of p.services) {
    const name = s.serviceName;
    const svc = { Service: name };
    const tg = (c: (typeof COLOURS)[number]) => s.colours[c].targetGroup.metrics;
    dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: `## ${name}`, width: 24, height: 1 }));
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: `${name}: weights written and phase`,
        width: WIDE,
        height: HEIGHT,
        left: COLOURS.map((c) => emf('Weight', 'Maximum', { Service: name, Color: c }, `${c} weight %`)),
        leftYAxis: { min: 0, max: 100, label: '%', showUnits: false },
        right: [emf('Phase', 'Maximum', svc, 'phase')],
        rightYAxis: { min: 0, max: PHASES.length - 1, showUnits: false },
        rightAnnotations: PHASES.map((phase, value) => ({ value, label: phase, color: '#aaaaaa' })),
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: observed split (green requests ÷ all) vs written green weight`,
        width: WIDE,
        height: HEIGHT,
        left: [
          new cloudwatch.MathExpression({
            expression: 'IF(FILL(b, 0) + FILL(g, 0) > 0, 100 * FILL(g, 0) / (FILL(b, 0) + FILL(g, 0)), 0)',
            usingMetrics: { b: tg('blue').requestCount({ period: PERIOD }), g: tg('green').requestCount({ period: PERIOD }) },
            label: 'observed green %',
            period: PERIOD,
          }),
          emf('Weight', 'Maximum', { Service: name, Color: 'green' }, 'written green %'),
        ],
        leftYAxis: { min: 0, max: 100, showUnits: false },
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: `${name}: requests per colour`,
        width: THIRD,
        height: HEIGHT,
        left: COLOURS.map((c) => tg(c).requestCount({ period: PERIOD, label: c })),
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: target 5xx per colour`,
        width: THIRD,
        height: HEIGHT,
        left: COLOURS.map((c) =>
          tg(c).httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, { period: PERIOD, label: c, statistic: 'Sum' }),
        ),
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: p99 response time per colour`,
        width: THIRD,
        height: HEIGHT,
        left: COLOURS.map((c) => tg(c).targetResponseTime({ period: PERIOD, label: c, statistic: 'p99' })),
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: `${name}: healthy / unhealthy targets per colour`,
        width: THIRD,
        height: HEIGHT,
        left: COLOURS.flatMap((c) => [
          tg(c).healthyHostCount({ period: PERIOD, statistic: 'Minimum', label: `${c} healthy` }),
          tg(c).unhealthyHostCount({ period: PERIOD, statistic: 'Maximum', label: `${c} unhealthy` }),
        ]),
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: running / desired tasks per colour (Container Insights)`,
        width: THIRD,
        height: HEIGHT,
        left: COLOURS.flatMap((c) => [
          insights(s.cluster, s.colours[c].service.serviceName, 'RunningTaskCount', `${c} running`),
          insights(s.cluster, s.colours[c].service.serviceName, 'DesiredTaskCount', `${c} desired`),
        ]),
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: load balancer 5xx, connection errors, drift`,
        width: THIRD,
        height: HEIGHT,
        left: [
          s.loadBalancer.metrics.httpCodeElb(elbv2.HttpCodeElb.ELB_5XX_COUNT, { period: PERIOD, statistic: 'Sum', label: 'load balancer 5xx' }),
          ...COLOURS.map((c) => tg(c).targetConnectionErrorCount({ period: PERIOD, statistic: 'Sum', label: `${c} connection errors` })),
        ],
        right: [emf('WeightDrift', 'Sum', svc, 'weight drift'), emf('CapacityDrift', 'Sum', svc, 'capacity drift')],
      }),
    );
    dashboard.addWidgets(
      new cloudwatch.GraphWidget({
        title: `${name}: deployments and rollbacks`,
        width: WIDE,
        height: HEIGHT,
        stacked: false,
        left: [
          emf('DeploymentsStarted', 'Sum', svc, 'started'),
          emf('DeploymentsSucceeded', 'Sum', svc, 'succeeded'),
          emf('DeploymentsRolledBack', 'Sum', svc, 'rolled back'),
          emf('DeploymentsFailed', 'Sum', svc, 'failed'),
        ],
      }),
      new cloudwatch.GraphWidget({
        title: `${name}: alarm → weights restored (ms)`,
        width: WIDE,
        height: HEIGHT,
        left: [emf('RollbackLatency', 'p50', svc, 'p50'), emf('RollbackLatency', 'Maximum', svc, 'max')],
      }),
    );
  }

  dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: '## Controller', width: 24, height: 1 }));
  dashboard.addWidgets(
    new cloudwatch.GraphWidget({
      title: 'Queue depth',
      width: THIRD,
      height: HEIGHT,
      left: [
        p.queue.metricApproximateNumberOfMessagesVisible({ period: PERIOD, label: 'visible' }),
        p.queue.metricApproximateNumberOfMessagesNotVisible({ period: PERIOD, label: 'in flight' }),
      ],
    }),
    new cloudwatch.GraphWidget({
      title: 'Oldest message age (s)',
      width: THIRD,
      height: HEIGHT,
      left: [p.queue.metricApproximateAgeOfOldestMessage({ period: PERIOD, statistic: 'Maximum' })],
    }),
    new cloudwatch.GraphWidget({
      title: 'Dead-letter depth',
      width: THIRD,
      height: HEIGHT,
      left: [p.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ period: PERIOD, statistic: 'Maximum' })],
    }),
  );
  dashboard.addWidgets(
    new cloudwatch.GraphWidget({
      title: 'Messages processed, ignored, rejected',
      width: THIRD,
      height: HEIGHT,
      left: [
        emf('MessagesProcessed', 'Sum', undefined, 'processed'),
        emf('MessagesIgnored', 'Sum', undefined, 'ignored'),
        emf('MessagesRejected', 'Sum', undefined, 'rejected'),
      ],
    }),
    new cloudwatch.GraphWidget({
      title: 'Outbox pending, step lag (ms), errors',
      width: THIRD,
      height: HEIGHT,
      left: [emf('OutboxPending', 'Maximum', undefined, 'outbox pending'), p.workerErrors],
      right: [emf('StepLag', 'Maximum', undefined, 'step lag ms')],
    }),
    new cloudwatch.AlarmStatusWidget({
      title: 'Alarms',
      width: THIRD,
      height: HEIGHT,
      alarms: [...p.controllerAlarms, ...p.services.flatMap((s) => s.alarms())],
    }),
  );
  dashboard.addWidgets(
    new cloudwatch.GraphWidget({
      title: 'Worker: CPU and memory (%), running tasks',
      width: THIRD,
      height: HEIGHT,
      left: [
        p.worker.metricCpuUtilization({ period: PERIOD, label: 'CPU %' }),
        p.worker.metricMemoryUtilization({ period: PERIOD, label: 'memory %' }),
      ],
      right: [insights(p.worker.cluster, p.worker.serviceName, 'RunningTaskCount', 'running tasks')],
    }),
    new cloudwatch.GraphWidget({
      title: 'Table: throttled requests',
      width: THIRD,
      height: HEIGHT,
      left: [
        p.table.metricThrottledRequestsForOperations({
          operations: [
            dynamodb.Operation.GET_ITEM,
            dynamodb.Operation.PUT_ITEM,
            dynamodb.Operation.UPDATE_ITEM,
            dynamodb.Operation.DELETE_ITEM,
            dynamodb.Operation.QUERY,
            dynamodb.Operation.TRANSACT_WRITE_ITEMS,
          ],
          period: PERIOD,
          label: 'throttled',
        }),
      ],
    }),
    new cloudwatch.GraphWidget({
      title: 'EventBridge → worker queue: invocations, failures',
      width: THIRD,
      height: HEIGHT,
      left: p.rules.flatMap((r, i) =>
        ['Invocations', 'FailedInvocations'].map((metricName) =>
          ruleMetric(
            r,
            metricName,
            `${['pushes', 'alarm changes', 'operator events', 'recorded changes'][i] ?? r.ruleName} ${metricName === 'Invocations' ? 'delivered' : 'failed'}`,
          ),
        ),
      ),
    }),
  );
  return dashboard;
}
