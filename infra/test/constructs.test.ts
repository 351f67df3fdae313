/**
 * The constructs as synthesized: rules, alarms, queues, table, bus, IAM scope, dashboard,
 * injected configuration, and cdk-nag with nothing unacknowledged.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { App, Duration, Stack, Tags, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ExampleStack } from '../lib/example';
import { PHASES } from '../lib/dashboard';
import { PROTECTED, ProductionGuard, protectedChanges, stackPolicy, type TemplateDocument } from '../lib/guard';
import type * as ecs from 'aws-cdk-lib/aws-ecs';

const IMAGE = '123456789012.dkr.ecr.us-east-1.amazonaws.com/bluegreen:1.0.0';

function example(withNag = false) {
  const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
  const stack = new ExampleStack(app, 'Example', { workerImage: IMAGE });
  if (withNag) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, stack, template: Template.fromStack(stack) };
}

const { stack, template } = example();
const json = template.toJSON();
const resources: Record<string, { Type: string; Properties: any; Metadata?: any; DeletionPolicy?: string }> = json.Resources;
const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);
const logicalId = (construct: any) => stack.getLogicalId(construct.node.defaultChild);
const ref = (construct: any) => ({ Ref: logicalId(construct) });

describe('BlueGreenService', () => {
  const web = stack.web;
  const blue = ref(web.colours.blue.targetGroup);
  const green = ref(web.colours.green.targetGroup);

  it('forwards production 100 % blue, 0 % green, on /* by default', () => {
    const rule = resources[logicalId(web.productionRule)].Properties;
    assert.deepEqual(rule.Conditions, [{ Field: 'path-pattern', PathPatternConfig: { Values: ['/*'] } }]);
    assert.equal(rule.Priority, 100);
    assert.deepEqual(rule.Actions, [
      { Type: 'forward', ForwardConfig: { TargetGroups: [{ TargetGroupArn: blue, Weight: 100 }, { TargetGroupArn: green, Weight: 0 }] } },
    ]);
  });

  it('routes the test listener to green only, reachable only from the VPC', () => {
    assert.ok(web.testRule);
    const rule = resources[logicalId(web.testRule)].Properties;
    assert.deepEqual(rule.Actions[0].ForwardConfig.TargetGroups, [
      { TargetGroupArn: blue, Weight: 0 },
      { TargetGroupArn: green, Weight: 100 },
    ]);
    const listener = resources[rule.ListenerArn.Ref].Properties;
    assert.equal(listener.Port, 9000);
    const ingress = [
      ...ofType('AWS::EC2::SecurityGroup').flatMap(([, r]) => r.Properties.SecurityGroupIngress ?? []),
      ...ofType('AWS::EC2::SecurityGroupIngress').map(([, r]) => r.Properties),
    ].filter((i: any) => i.FromPort === 9000);
    assert.equal(ingress.length, 1);
    assert.deepEqual(ingress[0].CidrIp, { 'Fn::GetAtt': [logicalId(stack.node.findChild('Vpc')), 'CidrBlock'] });
  });

  it('has two IP target groups with the health check and deregistration delay', () => {
    for (const c of ['blue', 'green'] as const) {
      const tg = resources[logicalId(web.colours[c].targetGroup)].Properties;
      assert.equal(tg.TargetType, 'ip');
      assert.equal(tg.HealthCheckPath, '/healthz');
      assert.deepEqual(
        tg.TargetGroupAttributes.find((a: any) => a.Key === 'deregistration_delay.timeout_seconds'),
        { Key: 'deregistration_delay.timeout_seconds', Value: '30' },
      );
    }
  });

  it('leaves both colours\' counts to the worker: no DesiredCount that an update would re-apply', () => {
    const services = Object.fromEntries(ofType('AWS::ECS::Service').map(([, r]) => [r.Properties.ServiceName, r.Properties]));
    for (const name of ['web-blue', 'web-green']) {
      assert.ok(services[name], name);
      assert.equal(services[name].DesiredCount, undefined, name);
    }
    assert.equal(services['web-blue'].LoadBalancers[0].TargetGroupArn.Ref, blue.Ref);
    assert.equal(services['web-green'].LoadBalancers[0].TargetGroupArn.Ref, green.Ref);
  });

  it('has per colour a guarded 5xx rate, p99 and unhealthy alarm, none breaching on missing data, and an anyOf composite', () => {
    const alarms = Object.fromEntries(ofType('AWS::CloudWatch::Alarm').map(([, r]) => [r.Properties.AlarmName, r.Properties]));
    for (const c of ['blue', 'green']) {
      const rate = alarms[`Example-web-${c}-5xx`];
      const expression = rate.Metrics.find((m: any) => m.Expression).Expression;
      assert.equal(expression, 'IF(FILL(requests, 0) >= 20, 100 * (FILL(errors, 0) + FILL(unreachable, 0)) / requests, 0)');
      const inputs = (alarm: any) =>
        alarm.Metrics.filter((m: any) => m.MetricStat)
          .map((m: any) => [m.Id, m.MetricStat.Metric.MetricName, m.MetricStat.Stat])
          .sort();
      assert.deepEqual(inputs(rate), [
        ['errors', 'HTTPCode_Target_5XX_Count', 'Sum'],
        ['requests', 'RequestCount', 'Sum'],
        ['unreachable', 'TargetConnectionErrorCount', 'Sum'],
      ]);
      assert.equal(rate.Threshold, 5);
      // p99 is judged only over enough requests: one slow request of a trickle is no p99.
      const p99 = alarms[`Example-web-${c}-p99`];
      assert.equal(p99.Metrics.find((m: any) => m.Expression).Expression, 'IF(FILL(requests, 0) >= 20, FILL(p99, 0), 0)');
      assert.deepEqual(inputs(p99), [['p99', 'TargetResponseTime', 'p99'], ['requests', 'RequestCount', 'Sum']]);
      assert.equal(p99.Threshold, 1);
      // Unhealthy is a share of the colour's targets, two periods in a row.
      const unhealthy = alarms[`Example-web-${c}-unhealthy`];
      assert.equal(
        unhealthy.Metrics.find((m: any) => m.Expression).Expression,
        'IF(FILL(healthy, 0) + FILL(unhealthy, 0) > 0, 100 * FILL(unhealthy, 0) / (FILL(healthy, 0) + FILL(unhealthy, 0)), 0)',
      );
      assert.deepEqual(inputs(unhealthy), [['healthy', 'HealthyHostCount', 'Minimum'], ['unhealthy', 'UnHealthyHostCount', 'Maximum']]);
      assert.equal(unhealthy.Threshold, 25);
      assert.equal(unhealthy.EvaluationPeriods, 2);
      assert.equal(unhealthy.DatapointsToAlarm, 2);
      assert.equal(rate.EvaluationPeriods, 1);
      for (const kind of ['5xx', 'p99', 'unhealthy']) {
        assert.equal(alarms[`Example-web-${c}-${kind}`].TreatMissingData, 'notBreaching', `Example-web-${c}-${kind}`);
        assert.match(alarms[`Example-web-${c}-${kind}`].AlarmDescription, /Runbook: /);
      }
    }
    const composites = ofType('AWS::CloudWatch::CompositeAlarm').map(([, r]) => r.Properties);
    assert.deepEqual(composites.map((c) => c.AlarmName).sort(), ['Example-web-blue-rollback', 'Example-web-green-rollback']);
    for (const c of composites) {
      const rule = JSON.stringify(c.AlarmRule);
      assert.equal((rule.match(/ALARM\(/g) ?? []).length, 3, rule);
      assert.equal((rule.match(/ OR /g) ?? []).length, 2, rule);
    }
  });

  it('moves several production rules together: each forwards 100/0, the configuration lists them, the worker may modify each', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
    const two = new ExampleStack(app, 'TwoRules', {
      workerImage: IMAGE,
      webOverrides: {
        productionRules: [{}, { priority: 200, conditions: [elbv2.ListenerCondition.hostHeaders(['api.example.com'])] }],
      },
    });
    const res = Template.fromStack(two).toJSON().Resources as typeof resources;
    const idOf = (construct: any) => two.getLogicalId(construct.node.defaultChild);
    const rules = two.web.productionRules;
    assert.equal(rules.length, 2);
    assert.equal(idOf(rules[0]), idOf(two.web.productionRule), 'the first rule keeps the single rule id');
    const tgs = [two.web.colours.blue.targetGroup, two.web.colours.green.targetGroup].map((t) => ({ Ref: idOf(t) }));
    const props = rules.map((r) => res[idOf(r)].Properties);
    assert.deepEqual(props.map((p) => p.Priority), [100, 200]);
    assert.deepEqual(props[1].Conditions, [{ Field: 'host-header', HostHeaderConfig: { Values: ['api.example.com'] } }]);
    for (const p of props) {
      assert.deepEqual(p.Actions[0].ForwardConfig.TargetGroups, [
        { TargetGroupArn: tgs[0], Weight: 100 },
        { TargetGroupArn: tgs[1], Weight: 0 },
      ]);
    }
    const entry = JSON.parse(JSON.stringify(two.resolve(two.web.entry)));
    assert.equal(entry.production_listener_rule_arn, undefined);
    assert.deepEqual(entry.production_listener_rule_arns, rules.map((r) => ({ Ref: idOf(r) })));
    const role = { Ref: idOf(two.controller.taskDefinition.taskRole) };
    const modify = Object.values(res)
      .filter((r) => r.Type === 'AWS::IAM::Policy' && r.Properties.Roles.some((x: any) => JSON.stringify(x) === JSON.stringify(role)))
      .flatMap((r) => r.Properties.PolicyDocument.Statement)
      .filter((st: any) => [st.Action].flat().includes('elasticloadbalancing:ModifyRule'))
      .flatMap((st: any) => [st.Resource].flat());
    assert.deepEqual(modify, [...rules.map((r) => ({ Ref: idOf(r) })), { Ref: idOf(two.web.testRule) }]);
    assert.throws(
      () => new ExampleStack(new App(), 'Both', { workerImage: IMAGE, webOverrides: { productionRule: {}, productionRules: [{}] } }),
      /give productionRule or productionRules, not both/,
    );
  });

  it('alarms when production is served by nothing: no healthy target in either colour, missing data breaching', () => {
    const alarm = resources[logicalId(web.servedByNothing)].Properties;
    assert.equal(alarm.AlarmName, 'Example-web-served-by-nothing');
    assert.equal(alarm.ComparisonOperator, 'LessThanThreshold');
    assert.equal(alarm.Threshold, 1);
    assert.equal(alarm.TreatMissingData, 'breaching');
    assert.equal(alarm.EvaluationPeriods, 2);
    const sum = alarm.Metrics.find((m: any) => m.Expression);
    assert.equal(sum.Expression, 'FILL(b, 0) + FILL(g, 0)');
    const inputs = alarm.Metrics.filter((m: any) => m.MetricStat);
    assert.deepEqual(inputs.map((m: any) => m.MetricStat.Metric.MetricName), ['HealthyHostCount', 'HealthyHostCount']);
    assert.deepEqual(
      inputs.map((m: any) => JSON.stringify(m.MetricStat.Metric.Dimensions.find((d: any) => d.Name === 'TargetGroup').Value)),
      (['blue', 'green'] as const).map((k) => JSON.stringify({ 'Fn::GetAtt': [logicalId(web.colours[k].targetGroup), 'TargetGroupFullName'] })),
    );
    // Not a rollback alarm: the worker does not watch it.
    assert.ok(!JSON.stringify(stack.controller.config).includes('served-by-nothing'));
  });

  it('takes health-check timings, a grace period and extra rollback alarms per colour', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
    const tuned = new ExampleStack(app, 'Tuned', {
      workerImage: IMAGE,
      webOverrides: {
        healthCheck: { path: '/ready', interval: Duration.seconds(15), timeout: Duration.seconds(4), healthyThreshold: 3, unhealthyThreshold: 4, gracePeriod: Duration.seconds(120) },
        alarms: {
          extra: (colour, targetGroup) => [
            new cloudwatch.Alarm(targetGroup, 'SlowStart', {
              alarmName: `web-${colour}-slow-start`,
              metric: targetGroup.metrics.targetResponseTime({ statistic: 'p50' }),
              threshold: 2,
              evaluationPeriods: 1,
            }),
          ],
        },
      },
    });
    const t = Template.fromStack(tuned).toJSON().Resources as Record<string, any>;
    const groups = Object.values(t).filter((r: any) => r.Type === 'AWS::ElasticLoadBalancingV2::TargetGroup').map((r: any) => r.Properties);
    assert.equal(groups.length, 2);
    for (const g of groups) {
      assert.equal(g.HealthCheckPath, '/ready');
      assert.equal(g.HealthCheckIntervalSeconds, 15);
      assert.equal(g.HealthCheckTimeoutSeconds, 4);
      assert.equal(g.HealthyThresholdCount, 3);
      assert.equal(g.UnhealthyThresholdCount, 4);
    }
    const services = Object.values(t).filter((r: any) => r.Type === 'AWS::ECS::Service' && /web-/.test(JSON.stringify(r.Properties.ServiceName)));
    assert.equal(services.length, 2);
    for (const svc of services as any[]) assert.equal(svc.Properties.HealthCheckGracePeriodSeconds, 120);
    const composites = Object.values(t).filter((r: any) => r.Type === 'AWS::CloudWatch::CompositeAlarm') as any[];
    for (const colour of ['blue', 'green']) {
      const composite = composites.find((c) => c.Properties.AlarmName === `Tuned-web-${colour}-rollback`);
      const rule = JSON.stringify(composite.Properties.AlarmRule);
      assert.equal((rule.match(/ALARM\(/g) ?? []).length, 4, rule);
      assert.ok(rule.includes('SlowStart'), rule);
    }
    assert.throws(
      () => new ExampleStack(new App(), 'Old', { workerImage: IMAGE, webOverrides: { alarms: { unhealthyHosts: 1 } } }),
      /unhealthyHosts is replaced by alarms.unhealthyPercent/,
    );
  });

  it('warns when a step holds for less than the rollback alarms need to see it', () => {
    const warnings = (strategy: any) => {
      const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
      const s = new ExampleStack(app, 'Steps', { workerImage: IMAGE, webOverrides: { strategy } });
      return Annotations.fromStack(s).findWarning('*', Match.stringLikeRegexp('rollback alarms need')).length;
    };
    assert.equal(warnings({ kind: 'linear', step_percent: 10, interval: '1m' }), 1);
    assert.equal(warnings({ kind: 'canary', percent: 10, bake: '90s' }), 1);
    assert.equal(warnings({ kind: 'linear', step_percent: 20, interval: '3m' }), 0);
    assert.equal(warnings({ kind: 'canary', percent: 10, bake: '5m' }), 0);
  });

  it('refuses a termination wait shorter than the deregistration delay', () => {
    assert.equal(stack.web.entry.termination_wait, '600s');
    const app = new App();
    assert.throws(
      () => new ExampleStack(app, 'Short', { workerImage: IMAGE, webOverrides: { terminationWait: Duration.seconds(10) } }),
      /terminationWait must be at least the deregistration delay/,
    );
  });
});

describe('BlueGreenController', () => {
  const c = stack.controller;

  it('has an encrypted queue redriving to a 14-day dead-letter queue, visibility matched to the worker', () => {
    const q = resources[logicalId(c.queue)].Properties;
    const dlq = resources[logicalId(c.deadLetterQueue)].Properties;
    assert.equal(q.SqsManagedSseEnabled, true);
    assert.equal(dlq.SqsManagedSseEnabled, true);
    assert.equal(q.VisibilityTimeout, 60);
    assert.deepEqual(q.RedrivePolicy, { deadLetterTargetArn: { 'Fn::GetAtt': [logicalId(c.deadLetterQueue), 'Arn'] }, maxReceiveCount: 15 });
    assert.equal(dlq.MessageRetentionPeriod, 14 * 24 * 3600);
    // SSL only on both.
    const policies = ofType('AWS::SQS::QueuePolicy').map(([, r]) => JSON.stringify(r.Properties));
    for (const queue of [c.queue, c.deadLetterQueue]) {
      assert.ok(policies.some((p) => p.includes(logicalId(queue)) && p.includes('"aws:SecureTransport":"false"')));
    }
  });

  it('keeps state in an on-demand table with PITR, TTL, encryption, deletion protection, retained', () => {
    const t = resources[logicalId(c.table)];
    assert.equal(t.DeletionPolicy, 'Retain');
    assert.equal(t.Properties.BillingMode, 'PAY_PER_REQUEST');
    assert.deepEqual(t.Properties.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
    assert.deepEqual(t.Properties.TimeToLiveSpecification, { AttributeName: 'expires_at', Enabled: true });
    assert.deepEqual(t.Properties.SSESpecification, { SSEEnabled: true });
    assert.equal(t.Properties.DeletionProtectionEnabled, true);
    assert.deepEqual(t.Properties.KeySchema, [
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ]);
  });

  it('feeds the queue with ECR pushes and alarm changes from the default bus, operator events from its own bus', () => {
    const queueArn = { 'Fn::GetAtt': [logicalId(c.queue), 'Arn'] };
    const rules = ofType('AWS::Events::Rule')
      .map(([, r]) => r.Properties)
      .filter((r) => JSON.stringify(r.Targets).includes(logicalId(c.queue)));
    assert.equal(rules.length, 4, 'pushes, alarm changes, operator events, recorded changes');
    for (const r of rules) {
      assert.deepEqual(r.Targets.map((t: any) => t.Arn), [queueArn]);
      // An event EventBridge cannot deliver is kept, not dropped after its retries.
      assert.deepEqual(r.Targets[0].DeadLetterConfig, { Arn: { 'Fn::GetAtt': [logicalId(c.undeliveredEvents), 'Arn'] } });
      assert.deepEqual(r.Targets[0].RetryPolicy, { MaximumRetryAttempts: 185, MaximumEventAgeInSeconds: 86400 });
    }
    const ecrRule = rules.find((r) => r.EventPattern.source[0] === 'aws.ecr');
    assert.deepEqual(ecrRule.EventPattern, {
      source: ['aws.ecr'],
      'detail-type': ['ECR Image Action'],
      detail: { 'action-type': ['PUSH'], result: ['SUCCESS'], 'repository-name': [ref(stack.node.findChild('WebRepository'))] },
    });
    assert.equal(ecrRule.EventBusName, 'default');
    const alarmRule = rules.find((r) => r.EventPattern.source[0] === 'aws.cloudwatch');
    assert.deepEqual(alarmRule.EventPattern['detail-type'], ['CloudWatch Alarm State Change']);
    assert.deepEqual(
      alarmRule.EventPattern.resources,
      (['blue', 'green'] as const).map((k) => ({ 'Fn::GetAtt': [logicalId(stack.web.colours[k].rollback), 'Arn'] })),
    );
    assert.equal(alarmRule.EventBusName, 'default');
    const operatorRule = rules.find((r) => r.EventPattern.source[0] === 'bluegreen.manual');
    assert.deepEqual(operatorRule.EventBusName, ref(c.bus));
  });

  it('lets only the named operators put operator events on the bus', () => {
    const statements = ofType('AWS::Events::EventBusPolicy').map(([, r]) => r.Properties.Statement);
    const allow = statements.find((s) => s.Effect === 'Allow');
    const deny = statements.find((s) => s.Sid === 'cdk-OnlyOperatorsPutOperatorEvents');
    const operator = { 'Fn::GetAtt': [logicalId(stack.node.findChild('Operator')), 'Arn'] };
    assert.deepEqual(allow.Principal, { AWS: operator });
    assert.deepEqual(allow.Condition, { StringEquals: { 'events:source': 'bluegreen.manual' } });
    assert.deepEqual(deny.Principal, { AWS: '*' });
    assert.deepEqual(deny.Condition.StringEquals, { 'events:source': 'bluegreen.manual' });
    // The operators only: the worker reads operator events, it never puts one.
    assert.deepEqual(deny.Condition.ArnNotEquals['aws:PrincipalArn'], [operator]);
    // And nobody but the worker puts the worker's events, which consumers trust.
    const worker = statements.find((s) => s.Sid === 'cdk-OnlyTheWorkerPutsWorkerEvents');
    assert.equal(worker.Effect, 'Deny');
    assert.deepEqual(worker.Condition.StringEquals, { 'events:source': 'bluegreen' });
    assert.deepEqual(worker.Condition.ArnNotEquals['aws:PrincipalArn'], { 'Fn::GetAtt': [logicalId(c.taskDefinition.taskRole), 'Arn'] });
  });

  it('conditions the PutEvents grants on the source: the worker its own, operators theirs', () => {
    const grants = (roleRef: unknown) =>
      ofType('AWS::IAM::Policy')
        .filter(([, r]) => r.Properties.Roles.some((x: any) => JSON.stringify(x) === JSON.stringify(roleRef)))
        .flatMap(([, r]) => r.Properties.PolicyDocument.Statement)
        .filter((st: any) => [st.Action].flat().includes('events:PutEvents'));
    const worker = grants(ref(c.taskDefinition.taskRole));
    assert.equal(worker.length, 1);
    assert.deepEqual(worker[0].Condition, { StringEquals: { 'events:source': 'bluegreen' } });
    const operator = grants(ref(stack.node.findChild('Operator')));
    assert.equal(operator.length, 1);
    assert.deepEqual(operator[0].Condition, { StringEquals: { 'events:source': 'bluegreen.manual' } });
  });

  it('runs the worker from environment configuration, read-only root, with a stop timeout', () => {
    const task = resources[logicalId(c.taskDefinition)].Properties;
    const container = task.ContainerDefinitions.find((c: any) => c.Name === 'worker');
    // EMF reaches CloudWatch metrics only with the json/emf log format: FireLens sets it.
    assert.equal(container.LogConfiguration.LogDriver, 'awsfirelens');
    assert.equal(container.LogConfiguration.Options.log_format, 'json/emf');
    assert.equal(container.LogConfiguration.Options.log_key, 'log');
    const router = task.ContainerDefinitions.find((c: any) => c.FirelensConfiguration);
    assert.equal(router.FirelensConfiguration.Type, 'fluentbit');
    // The ECR reference, with the partition's URL suffix as a token (an ECR image: pull granted).
    assert.deepEqual(container.Image, { 'Fn::Join': ['', ['123456789012.dkr.ecr.us-east-1.', { Ref: 'AWS::URLSuffix' }, '/bluegreen:1.0.0']] });
    assert.deepEqual(container.Command, ['worker']);
    assert.equal(container.ReadonlyRootFilesystem, true);
    assert.equal(container.StopTimeout, 60);
    // The health check runs the image's own binary, where the Dockerfile puts it.
    assert.deepEqual(container.HealthCheck, {
      Command: ['CMD', '/usr/local/bin/bluegreen', 'health', '--timeout', '3s'],
      Interval: 30,
      Retries: 3,
      StartPeriod: 60,
      Timeout: 5,
    });
    const dockerfile = fs.readFileSync(path.join(__dirname, '..', '..', 'docker', 'Dockerfile'), 'utf8');
    assert.match(dockerfile, new RegExp(`^COPY .* ${container.HealthCheck.Command[1]}$`, 'm'));
    const env = Object.fromEntries(container.Environment.map((e: any) => [e.Name, e.Value]));
    assert.equal(env.BLUEGREEN_METRICS_NAMESPACE, 'Bluegreen');
    const config = JSON.parse(JSON.stringify(stack.resolve(c.config)));
    assert.deepEqual(Object.keys(config.worker).sort(), ['account_id', 'event_bus', 'manual_source', 'queue_url', 'region', 'source', 'table']);
    assert.deepEqual(config.services.map((s: any) => s.name), ['web']);
    const web = config.services[0];
    assert.deepEqual(web.rollback_alarms, {
      blue: [ref(stack.web.colours.blue.rollback)],
      green: [ref(stack.web.colours.green.rollback)],
    }, 'per colour: the live colour\'s composite never blocks a fix');
    assert.deepEqual(web.production_listener_rule_arn, ref(stack.web.productionRule));
    assert.deepEqual(web.strategy, { kind: 'linear', step_percent: 20, interval: '3m' });
    assert.equal(web.min_tasks, 2, 'desiredCount is the live colour\'s floor');
    assert.equal(web.container_name, 'app');
    assert.equal(web.tag_pattern, 'release-*');
    // The injected string is the same document.
    assert.equal(typeof container.Environment.find((e: any) => e.Name === 'BLUEGREEN_CONFIG_JSON').Value, 'object');
  });

  it('alarms on dead letters, message age, errors, a stopped worker, stuck deployments, drift and failures', () => {
    const alarms = Object.fromEntries(ofType('AWS::CloudWatch::Alarm').map(([, r]) => [r.Properties.AlarmName, r.Properties]));
    const expect: Record<string, [string, string]> = {
      'dead-letters': ['ApproximateNumberOfMessagesVisible', 'AWS/SQS'],
      'oldest-message': ['ApproximateAgeOfOldestMessage', 'AWS/SQS'],
      'worker-errors': ['WorkerErrors', 'Bluegreen'],
      'worker-not-running': ['CPUUtilization', 'AWS/ECS'],
      'deployment-stuck': ['StepLag', 'Bluegreen'],
      'weight-drift': ['WeightDrift', 'Bluegreen'],
      'capacity-drift': ['CapacityDrift', 'Bluegreen'],
      'deployment-failed': ['DeploymentsFailed', 'Bluegreen'],
      'undelivered-events': ['ApproximateNumberOfMessagesVisible', 'AWS/SQS'],
    };
    for (const [short, [metric, namespace]] of Object.entries(expect)) {
      const name = `Example-${short}`;
      assert.ok(alarms[name], name);
      assert.equal(alarms[name].MetricName, metric, name);
      assert.equal(alarms[name].Namespace, namespace, name);
      assert.match(alarms[name].AlarmDescription, new RegExp(`Runbook: .*bluegreen-${short}\\.md`));
    }
    assert.equal(alarms['Example-worker-not-running'].TreatMissingData, 'breaching');
    const invocations = alarms['Example-failed-invocations'];
    const failed = invocations.Metrics.filter((m: any) => m.MetricStat);
    assert.equal(failed.length, 4, 'one FailedInvocations series per rule that feeds the queue');
    for (const m of failed) {
      assert.equal(m.MetricStat.Metric.Namespace, 'AWS/Events');
      assert.equal(m.MetricStat.Metric.MetricName, 'FailedInvocations');
      assert.deepEqual(m.MetricStat.Metric.Dimensions.map((d: any) => d.Name), ['RuleName']);
    }
    assert.match(invocations.AlarmDescription, /Runbook: .*bluegreen-undelivered-events\.md/);
    const filter = ofType('AWS::Logs::MetricFilter')[0][1].Properties;
    assert.equal(filter.FilterPattern, '{ $.level = "ERROR" }');
  });

  it('shows every figure on one dashboard', () => {
    const body = JSON.stringify(resources[logicalId(c.dashboard)].Properties.DashboardBody);
    for (const title of [
      'web: weights written and phase',
      'web: observed split (green requests ÷ all) vs written green weight',
      'web: requests per colour',
      'web: target 5xx per colour',
      'web: p99 response time per colour',
      'web: deployments and rollbacks',
      'web: alarm → weights restored (ms)',
      'Queue depth',
      'Oldest message age (s)',
      'Dead-letter depth',
      'Messages processed, ignored, rejected',
      'Alarms',
      'web: healthy / unhealthy targets per colour',
      'web: running / desired tasks per colour (Container Insights)',
      'web: load balancer 5xx, connection errors, drift',
      'Worker: CPU and memory (%), running tasks',
      'Table: throttled requests',
      'EventBridge → worker queue: invocations, failures',
    ]) {
      assert.ok(body.includes(JSON.stringify(title).slice(1, -1)), title);
    }
    for (const phase of PHASES) assert.ok(body.includes(`\\"label\\":\\"${phase}\\"`), phase);
    for (const metric of [
      'DeploymentsStarted',
      'DeploymentsSucceeded',
      'DeploymentsRolledBack',
      'RollbackLatency',
      'MessagesRejected',
      'OutboxPending',
      'HealthyHostCount',
      'UnHealthyHostCount',
      'RunningTaskCount',
      'DesiredTaskCount',
      'HTTPCode_ELB_5XX_Count',
      'TargetConnectionErrorCount',
      'WeightDrift',
      'MemoryUtilization',
      'ThrottledRequests',
      'FailedInvocations',
    ]) {
      assert.ok(body.includes(metric), metric);
    }
  });
});

describe('recorded changes', () => {
  it('sends the CloudTrail records of writes to rules, listeners and ECS services to the worker queue', () => {
    const c = stack.controller;
    const rule = resources[logicalId(c.rules[3])].Properties;
    assert.deepEqual(rule.EventPattern, {
      source: ['aws.elasticloadbalancing', 'aws.ecs'],
      'detail-type': ['AWS API Call via CloudTrail'],
      detail: {
        eventSource: ['elasticloadbalancing.amazonaws.com', 'ecs.amazonaws.com'],
        eventName: ['ModifyRule', 'DeleteRule', 'ModifyListener', 'UpdateService', 'DeleteService'],
        // Anyone's but the worker's own: a role's session other than the worker role's,
        // or a user, the root or a service.
        $or: [
          { userIdentity: { type: [{ 'anything-but': 'AssumedRole' }] } },
          { userIdentity: { sessionContext: { sessionIssuer: { arn: [{ 'anything-but': { 'Fn::GetAtt': [logicalId(c.node.findChild('WorkerRole')), 'Arn'] } }] } } } },
        ],
      },
    });
    assert.equal(rule.EventBusName, 'default', 'the default bus, where AWS delivers them');
    assert.deepEqual(rule.Targets[0].Arn, { 'Fn::GetAtt': [logicalId(c.queue), 'Arn'] });
    assert.deepEqual(rule.Targets[0].DeadLetterConfig, { Arn: { 'Fn::GetAtt': [logicalId(c.undeliveredEvents), 'Arn'] } });
  });
});

describe('production guard', () => {
  /** The example's template after `change` (applied to the stack before synth). */
  const variant = (change: (s: ExampleStack) => void = () => {}, props = {}): TemplateDocument => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
    const s = new ExampleStack(app, 'Example', { workerImage: IMAGE, ...props });
    change(s);
    return Template.fromStack(s).toJSON() as TemplateDocument;
  };
  const deployed = variant();
  const protectedIds = Object.entries(deployed.Resources ?? {})
    .filter(([, r]) => r.Metadata?.[PROTECTED])
    .map(([id, r]) => `${r.Type} ${r.Metadata?.[PROTECTED]} ${id}`)
    .sort();
  const summary = (t: TemplateDocument) => protectedChanges(deployed, t).map((c) => `${c.action} ${c.logicalId}: ${c.because.join(', ')}`);
  const services = Object.entries(deployed.Resources ?? {}).filter(([, r]) => r.Type === 'AWS::ECS::Service' && String((r.Properties as any).ServiceName).startsWith('web-'));

  it('marks both colour services and every production rule, nothing else', () => {
    assert.equal(services.length, 2);
    assert.deepEqual(
      protectedIds.map((p) => p.split(' ').slice(0, 2).join(' ')),
      ['AWS::ECS::Service colour-service', 'AWS::ECS::Service colour-service', 'AWS::ElasticLoadBalancingV2::ListenerRule production-rule'],
    );
  });

  it('lets the same template, and changes elsewhere, through', () => {
    assert.deepEqual(summary(variant()), []);
    const tuned = variant(() => {}, { webOverrides: { alarms: { errorRatePercent: 2 } } });
    assert.notEqual(JSON.stringify(tuned), JSON.stringify(deployed), 'the variant differs');
    assert.deepEqual(summary(tuned), []);
  });

  it('stops a tag on the stack: it would re-apply both colour services and the production rule', () => {
    const tagged = summary(variant((s) => Tags.of(s).add('cost-centre', '42')));
    for (const [id] of services) assert.ok(tagged.includes(`update ${id}: Tags`), `${id} in ${tagged}`);
  });

  it('stops a changed task definition: a new revision both colours would roll to in place', () => {
    const changed = protectedChanges(
      deployed,
      variant((s) => (s.web.colours.blue.service.taskDefinition as ecs.FargateTaskDefinition).defaultContainer?.addEnvironment('FEATURE', 'on')),
    );
    assert.deepEqual(
      changed.map((c) => [c.logicalId, c.action]).sort(),
      services.map(([id]) => [id, 'update']).sort(),
    );
    for (const c of changed) assert.match(c.because.join(), /^TaskDefinition \(\w+ replaced\)$/);
  });

  it('stops a moved or removed production rule and names a replacement', () => {
    const [rule] = Object.entries(deployed.Resources ?? {}).filter(([, r]) => r.Metadata?.[PROTECTED] === 'production-rule');
    const moved = structuredClone(deployed) as any;
    moved.Resources[rule[0]].Properties.Priority = 7;
    assert.deepEqual(summary(moved), [`update ${rule[0]}: Priority`]);
    moved.Resources[rule[0]].Properties.ListenerArn = { Ref: 'Other' };
    assert.equal(protectedChanges(deployed, moved)[0].action, 'replace');
    delete moved.Resources[rule[0]];
    assert.deepEqual(summary(moved), [`delete ${rule[0]}: removed from the template`]);
  });

  it('fails the synth against the deployed template, unless allowed', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-deployed-'));
    fs.writeFileSync(path.join(dir, 'Example.template.json'), JSON.stringify(deployed));
    const synth = (allow: boolean, change: (s: ExampleStack) => void) => {
      const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
      change(new ExampleStack(app, 'Example', { workerImage: IMAGE }));
      Validations.of(app).addPlugins(new ProductionGuard({ deployed: dir, allow }));
      return () => app.synth();
    };
    const tag = (s: ExampleStack) => Tags.of(s).add('cost-centre', '42');
    assert.throws(synth(false, tag), (e: Error) => {
      const report = fs.readFileSync(/found in: (\S+)/.exec(e.message)?.[1] ?? '', 'utf8');
      for (const [id] of services) assert.match(report, new RegExp(`would update the colour-service ${id} \\(Tags\\)`));
      return /protected-resource-changed/.test(report);
    });
    assert.doesNotThrow(synth(true, tag));
    assert.doesNotThrow(synth(false, () => {}));
  });

  it('writes a stack policy that refuses exactly the protected updates', () => {
    const policy = stackPolicy(deployed);
    // CloudFormation's stack policy semantics: an explicit deny wins over any allow.
    const allows = (id: string, action: string) => {
      const matches = (st: (typeof policy.Statement)[number]) =>
        [st.Action].flat().some((a) => a === action || a === 'Update:*') &&
        [st.Resource].flat().some((r) => r === '*' || r === `LogicalResourceId/${id}`);
      const hits = policy.Statement.filter(matches);
      return hits.some((st) => st.Effect === 'Allow') && !hits.some((st) => st.Effect === 'Deny');
    };
    for (const [id, r] of Object.entries(deployed.Resources ?? {})) {
      const guarded = Boolean(r.Metadata?.[PROTECTED]);
      for (const action of ['Update:Modify', 'Update:Replace', 'Update:Delete']) {
        assert.equal(allows(id, action), !guarded, `${action} on ${r.Type} ${id}`);
      }
    }
  });
});

describe('names', () => {
  it('prefixes bus, dashboard and alarm names with the stack name, so two stacks share an account', () => {
    const names = (id: string, props = {}) => {
      const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
      const t = Template.fromStack(new ExampleStack(app, id, { workerImage: IMAGE, ...props })).toJSON().Resources as Record<string, any>;
      const of = (type: string, key: string) => Object.values(t).filter((r: any) => r.Type === type).map((r: any) => r.Properties[key]);
      return {
        alarms: [...of('AWS::CloudWatch::Alarm', 'AlarmName'), ...of('AWS::CloudWatch::CompositeAlarm', 'AlarmName')],
        bus: of('AWS::Events::EventBus', 'Name'),
        dashboard: of('AWS::CloudWatch::Dashboard', 'DashboardName'),
      };
    };
    const staging = names('Staging');
    const prod = names('Prod');
    assert.ok(staging.alarms.length >= 19);
    assert.ok(staging.alarms.every((n: string) => n.startsWith('Staging-')), staging.alarms.join(' '));
    assert.deepEqual(staging.alarms.filter((n: string) => prod.alarms.includes(n)), []);
    assert.deepEqual([staging.bus, prod.bus], [['Staging'], ['Prod']]);
    assert.deepEqual([staging.dashboard, prod.dashboard], [['Staging'], ['Prod']]);
    const named = names('Named', { namePrefix: 'shop-prod' });
    assert.ok(named.alarms.every((n: string) => n.startsWith('shop-prod-')), named.alarms.join(' '));
    assert.deepEqual(named.bus, ['shop-prod']);
  });
});

describe('paging', () => {
  it('has no alarm actions unless asked', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
    const quiet = Template.fromStack(new ExampleStack(app, 'Quiet', { workerImage: IMAGE, paging: false })).toJSON().Resources as Record<string, any>;
    const alarms = Object.values(quiet).filter((r: any) => r.Type === 'AWS::CloudWatch::Alarm');
    assert.ok(alarms.length > 10);
    for (const r of alarms) assert.equal(r.Properties.AlarmActions, undefined, r.Properties.AlarmName);
    assert.ok(!Object.values(quiet).some((r: any) => r.Type === 'AWS::SNS::Topic'));
  });

  it('pages through the alarm actions on every controller alarm and served-by-nothing, never on the rollback alarms; notifies a topic of the worker events', () => {
    const t = resources as Record<string, any>; // the example pages by default
    const topic = Object.keys(t).find((k) => t[k].Type === 'AWS::SNS::Topic' && k.startsWith('Pager'));
    assert.ok(topic);
    const alarms = Object.values(t).filter((r: any) => r.Type === 'AWS::CloudWatch::Alarm' || r.Type === 'AWS::CloudWatch::CompositeAlarm');
    const named = (r: any) => r.Properties.AlarmName;
    const paging = alarms.filter((r: any) => JSON.stringify(r.Properties.AlarmActions ?? []).includes(topic));
    const names = paging.map(named).sort();
    assert.deepEqual(names, [
      'Example-capacity-drift',
      'Example-dead-letters',
      'Example-deployment-failed',
      'Example-deployment-stuck',
      'Example-failed-invocations',
      'Example-oldest-message',
      'Example-undelivered-events',
      'Example-web-served-by-nothing',
      'Example-weight-drift',
      'Example-worker-degraded',
      'Example-worker-errors',
      'Example-worker-not-running',
    ]);
    for (const r of paging) assert.ok(JSON.stringify(r.Properties.OKActions).includes(topic), named(r));
    const rules = Object.values(t).filter((r: any) => r.Type === 'AWS::Events::Rule' && JSON.stringify(r.Properties.Targets).includes(topic));
    assert.equal(rules.length, 1);
    assert.deepEqual((rules[0] as any).Properties.EventPattern, { source: ['bluegreen'] });
  });
});

describe('IAM', () => {
  // The only actions allowed on "*": AWS offers no resource-level permission for them, or
  // documents that a narrower scope changes what the call returns.
  const UNSCOPABLE = new Set([
    'elasticloadbalancing:DescribeRules',
    'elasticloadbalancing:DescribeListeners',
    'elasticloadbalancing:DescribeTargetHealth',
    'ecs:RegisterTaskDefinition',
    'ecs:DescribeTaskDefinition',
    'ecs:ListTaskDefinitions',
    'ecr:GetAuthorizationToken',
    // "To use this operation and return information about composite alarms, you must be
    // signed on with the cloudwatch:DescribeAlarms permission that is scoped to *"
    // (CloudWatch API reference, DescribeAlarms).
    'cloudwatch:DescribeAlarms',
  ]);
  const statements = ofType('AWS::IAM::Policy').flatMap(([id, r]) =>
    r.Properties.PolicyDocument.Statement.map((s: any) => ({ id, ...s })),
  );
  const list = (x: unknown) => (Array.isArray(x) ? x : [x]);

  it('puts "*" only on actions that cannot be scoped', () => {
    assert.ok(statements.length > 5);
    for (const s of statements) {
      if (list(s.Resource).includes('*')) {
        for (const action of list(s.Action)) assert.ok(UNSCOPABLE.has(action), `${s.id}: ${action} on *`);
      }
      for (const action of list(s.Action)) assert.ok(!action.includes('*'), `${s.id}: wildcard action ${action}`);
    }
  });

  const workerRole = ref(stack.controller.taskDefinition.taskRole);
  const worker = ofType('AWS::IAM::Policy')
    .filter(([, r]) => r.Properties.Roles.some((x: any) => JSON.stringify(x) === JSON.stringify(workerRole)))
    .flatMap(([, r]) => r.Properties.PolicyDocument.Statement);
  const granting = (action: string) => worker.filter((s) => list(s.Action).includes(action));

  it('scopes ModifyRule to the registered rules and UpdateService to the registered services', () => {
    assert.deepEqual(granting('elasticloadbalancing:ModifyRule').flatMap((s) => list(s.Resource)), [
      ref(stack.web.productionRule),
      ref(stack.web.testRule),
    ]);
    const services = granting('ecs:UpdateService').flatMap((s) => list(s.Resource));
    assert.deepEqual(services, [ref(stack.web.colours.blue.service), ref(stack.web.colours.green.service)]);
  });

  it('passes only the services task and execution roles, only to ECS tasks', () => {
    const [pass] = granting('iam:PassRole');
    assert.deepEqual(pass.Condition, { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } });
    assert.equal(list(pass.Resource).length, 2);
    for (const r of list(pass.Resource)) assert.match(JSON.stringify(r), /WebTask(TaskRole|ExecutionRole)/);
  });

  it('reads alarms on "*", the only scope under which DescribeAlarms returns the composite rollback alarms', () => {
    assert.deepEqual(granting('cloudwatch:DescribeAlarms').flatMap((s) => list(s.Resource)), ['*']);
  });

  it('reads only the registered repositories', () => {
    const [ecr] = granting('ecr:DescribeImages');
    assert.deepEqual(list(ecr.Resource), [{ 'Fn::GetAtt': [logicalId(stack.node.findChild('WebRepository')), 'Arn'] }]);
  });

  it('grants every AWS operation the worker calls (as its adapters name them in src/aws/)', () => {
    const src = path.resolve(__dirname, '..', '..', 'src', 'aws');
    const prefix: Record<string, string> = {
      'cloudwatch.rs': 'cloudwatch',
      'dynamodb.rs': 'dynamodb',
      'ecr.rs': 'ecr',
      'ecs.rs': 'ecs',
      'elb.rs': 'elasticloadbalancing',
      'events.rs': 'events',
      'sqs.rs': 'sqs',
    };
    // Operations whose IAM action lives elsewhere, or that the construct does not need.
    const special: Record<string, string | null> = {
      'ecs:DescribeTargetHealth': 'elasticloadbalancing:DescribeTargetHealth', // the ECS adapter reads target health
      'dynamodb:TransactWriteItems': null, // no action of its own: each item is authorized by its PutItem/UpdateItem/…
      'elasticloadbalancing:ModifyListener': null, // only for production_listener_arn; the construct moves rules
    };
    const granted = new Set(worker.flatMap((s: any) => list(s.Action)));
    let checked = 0;
    for (const [file, service] of Object.entries(prefix)) {
      const text = fs.readFileSync(path.join(src, file), 'utf8');
      for (const m of text.matchAll(/(?:repeat|port_error|conditional)\(\s*"([A-Za-z]+)"/g)) {
        const called = `${service}:${m[1]}`;
        const action = called in special ? special[called] : called;
        if (action === null) continue;
        assert.ok(granted.has(action), `the worker calls ${m[1]} (src/aws/${file}) but its role lacks ${action}`);
        checked += 1;
      }
    }
    assert.ok(checked >= 20, `only ${checked} operations found`);
  });

  it('lets the worker task pull its image from a private ECR repository', () => {
    const execution = stack.controller.taskDefinition.executionRole;
    assert.ok(execution);
    const pull = ofType('AWS::IAM::Policy')
      .filter(([, r]) => r.Properties.Roles.some((x: any) => JSON.stringify(x) === JSON.stringify(ref(execution))))
      .flatMap(([, r]) => r.Properties.PolicyDocument.Statement);
    const on = (action: string) => pull.filter((st: any) => list(st.Action).includes(action)).flatMap((st: any) => list(st.Resource));
    assert.deepEqual(on('ecr:GetAuthorizationToken'), ['*']);
    const repository = JSON.stringify(on('ecr:BatchGetImage'));
    assert.match(repository, /:ecr:us-east-1:123456789012:repository\/bluegreen/);
    assert.deepEqual(on('ecr:GetDownloadUrlForLayer'), on('ecr:BatchGetImage'));
  });

  it('pulls a worker image from another registry without ECR grants, and refuses an ECR reference without a tag', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) });
    const other = new ExampleStack(app, 'Other', { workerImage: 'ghcr.io/example/bluegreen:1.0.0' });
    const execution = other.getLogicalId(other.controller.taskDefinition.executionRole!.node.defaultChild as any);
    const grants = Object.values(Template.fromStack(other).findResources('AWS::IAM::Policy'))
      .filter((r: any) => JSON.stringify(r.Properties.Roles).includes(execution))
      .flatMap((r: any) => r.Properties.PolicyDocument.Statement.flatMap((st: any) => list(st.Action)));
    assert.ok(grants.length > 0 && !grants.some((a: string) => a.startsWith('ecr:')), `ECR grants for a non-ECR image: ${grants}`);
    const digest = new ExampleStack(new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')) }), 'Pinned', {
      workerImage: `123456789012.dkr.ecr.eu-west-1.amazonaws.com/tools/bluegreen@sha256:${'a'.repeat(64)}`,
    });
    const image = JSON.stringify(
      Template.fromStack(digest).findResources('AWS::ECS::TaskDefinition'),
    );
    assert.match(image, /tools\/bluegreen@sha256:a{64}/);
    assert.throws(
      () => new ExampleStack(new App(), 'Untagged', { workerImage: '123456789012.dkr.ecr.us-east-1.amazonaws.com/bluegreen' }),
      /names no tag or digest/,
    );
  });

  it('lets the operator role run status, history and watch as well as put events', () => {
    const operator = ref(stack.node.findChild('Operator'));
    const actions = ofType('AWS::IAM::Policy')
      .filter(([, r]) => r.Properties.Roles.some((x: any) => JSON.stringify(x) === JSON.stringify(operator)))
      .flatMap(([, r]) => r.Properties.PolicyDocument.Statement.flatMap((st: any) => list(st.Action)));
    for (const a of ['events:PutEvents', 'dynamodb:GetItem', 'elasticloadbalancing:DescribeRules', 'cloudwatch:DescribeAlarms']) {
      assert.ok(actions.includes(a), `operator lacks ${a}: ${actions}`);
    }
  });

  it('fails on a wildcard where a scoped resource is possible', () => {
    const bad = { Action: 'ecs:UpdateService', Resource: '*' };
    assert.ok(list(bad.Resource).includes('*') && !UNSCOPABLE.has(bad.Action));
  });
});

describe('runbooks', () => {
  const dir = path.resolve(__dirname, '..', '..', 'runbooks');
  it('links every alarm to a runbook file that exists', () => {
    const alarms = [...ofType('AWS::CloudWatch::Alarm'), ...ofType('AWS::CloudWatch::CompositeAlarm')];
    assert.ok(alarms.length >= 15);
    for (const [id, r] of alarms) {
      const link = /Runbook: runbooks\/([a-z0-9-]+\.md)/.exec(JSON.stringify(r.Properties.AlarmDescription));
      assert.ok(link, `${id} has no runbook link`);
      assert.ok(fs.existsSync(path.join(dir, link[1])), `${id}: runbooks/${link[1]} does not exist`);
    }
  });
  it('gives every runbook the same six sections', () => {
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.md') && f !== 'README.md');
    assert.ok(files.length >= 16);
    for (const f of files) {
      const headings = [...fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/^## (\w+)/gm)].map((m) => m[1]);
      assert.deepEqual(headings, ['Meaning', 'Impact', 'Diagnosis', 'Mitigation', 'Verification', 'Escalation'], f);
    }
  });
});

describe('runbook links', () => {
  it('link the runbooks under the base URL of the context, and warn when that is not an absolute URL', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-cdk-')), context: { 'bluegreen:runbookBaseUrl': 'https://git.example.com/ops/bluegreen/blob/main/runbooks/' } });
    const linked = new ExampleStack(app, 'Linked', { workerImage: IMAGE });
    const descriptions = Object.values(Template.fromStack(linked).toJSON().Resources as Record<string, any>)
      .filter((r) => r.Type === 'AWS::CloudWatch::Alarm')
      .map((r) => JSON.stringify(r.Properties.AlarmDescription));
    assert.ok(descriptions.length > 10);
    for (const d of descriptions) assert.match(d, /Runbook: https:\/\/git\.example\.com\/ops\/bluegreen\/blob\/main\/runbooks\/[a-z0-9-]+\.md/);
    assert.equal(Annotations.fromStack(linked).findWarning('*', Match.stringLikeRegexp('nobody paged can open')).length, 0);
    // Without it: one warning for the stack.
    assert.equal(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('nobody paged can open')).length, 1);
  });
});

describe('checkov', () => {
  it('skips a check only with a reason, in the resource metadata', () => {
    const skips = Object.entries(resources).flatMap(([id, r]) => (r.Metadata?.checkov?.skip ?? []).map((s: any) => ({ id, ...s })));
    assert.ok(skips.length >= 5);
    for (const s of skips) {
      assert.match(s.id, /./);
      assert.match(String(s.comment), /\w+ \w+ \w+/, `${s.id}: ${JSON.stringify(s)}`);
    }
  });
});

describe('cdk-nag AwsSolutionsChecks', () => {
  it('finds nothing unacknowledged in the example', () => {
    const { app } = example(true);
    const assembly = app.synth();
    const report = JSON.parse(fs.readFileSync(path.join(assembly.directory, 'validation-report.json'), 'utf8'));
    const violations = report.pluginReports.flatMap((r: any) => r.violations);
    assert.deepEqual(violations.map((v: any) => `${v.ruleName} ${v.violatingConstructs.map((c: any) => c.constructPath)}`), []);
  });

  it('does report an unacknowledged finding (the check can fail)', () => {
    const app = new App({ outdir: fs.mkdtempSync(path.join(os.tmpdir(), 'bluegreen-nag-')) });
    new sqs.Queue(new Stack(app, 'Bare'), 'Queue');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    assert.throws(() => app.synth(), /Validation failed/);
  });
});
