import * as path from 'node:path';
import { CfnOutput, RemovalPolicy, Stack, StackProps, Validations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import { Construct } from 'constructs';
import { BlueGreenService, BlueGreenServiceProps } from './blue-green-service';
import { skipCheckov } from './checkov';
import { BlueGreenController, UNSCOPED_REASON, workerImage } from './controller';

/** Options of the example stack. */
export interface ExampleStackProps extends StackProps {
  /**
   * The worker's image as a registry reference. Default: built from `docker/Dockerfile`
   * of this repository as a CDK asset (needs Docker at deploy time, not at synth time).
   */
  readonly workerImage?: string;
  /** Prefix of bus, dashboard and alarm names. Default: the stack's name. */
  readonly namePrefix?: string;
  /** Changes to the sample service's properties (tests use it). */
  readonly webOverrides?: Partial<BlueGreenServiceProps>;
  /**
   * A `Pager` SNS topic that the controller alarms page and the worker events notify
   * (subscribe your pager or chat to it). Default true; tests turn it off to see the
   * construct without actions.
   */
  readonly paging?: boolean;
}

/** Repository root (the Docker build context). */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');

/**
 * The example: a VPC without NAT gateways (public subnets only, to keep idle cost low), an
 * internet-facing ALB, a cluster, one sample service `web` in blue-green with a test
 * listener open only inside the VPC, and the controller.
 */
export class ExampleStack extends Stack {
  /** The sample service. */
  public readonly web: BlueGreenService;
  /** The controller. */
  public readonly controller: BlueGreenController;

  constructor(scope: Construct, id: string, props: ExampleStackProps = {}) {
    super(scope, id, props);

    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
    });
    const cluster = new ecs.Cluster(this, 'Cluster', {
      vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    const alb = new elbv2.ApplicationLoadBalancer(this, 'Alb', { vpc, internetFacing: true, dropInvalidHeaderFields: true });
    const listener = alb.addListener('Http', {
      port: 80,
      open: true,
      defaultAction: elbv2.ListenerAction.fixedResponse(404, { contentType: 'text/plain', messageBody: 'not found' }),
    });

    const repository = new ecr.Repository(this, 'WebRepository', {
      repositoryName: 'web',
      imageScanOnPush: true,
      imageTagMutability: ecr.TagMutability.IMMUTABLE,
      encryption: ecr.RepositoryEncryption.KMS,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const webLogs = new logs.LogGroup(this, 'WebLogs', { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY });
    skipCheckov(webLogs, 'CKV_AWS_158', 'The sample app logs no secrets; CloudWatch Logs encrypts at rest by default');
    const task = new ecs.FargateTaskDefinition(this, 'WebTask', { cpu: 256, memoryLimitMiB: 512 });
    task.addContainer('app', {
      image: ecs.ContainerImage.fromEcrRepository(repository, 'initial'),
      portMappings: [{ containerPort: 8080 }],
      readonlyRootFilesystem: true,
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'web', logGroup: webLogs }),
    });

    this.web = new BlueGreenService(this, 'Web', {
      serviceName: 'web',
      cluster,
      loadBalancer: alb,
      listener,
      testListener: { port: 9000, allowFrom: ec2.Peer.ipv4(vpc.vpcCidrBlock) },
      taskDefinition: task,
      containerName: 'app',
      containerPort: 8080,
      repository,
      tagPattern: 'release-*',
      assignPublicIp: true,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      strategy: { kind: 'linear', step_percent: 20, interval: '3m' },
      namePrefix: props.namePrefix,
      ...props.webOverrides,
    });

    const operator = new iam.Role(this, 'Operator', {
      assumedBy: new iam.AccountRootPrincipal(),
      description: 'May put bluegreen operator events (promote, pause, rollback and the rest)',
    });
    const pager = (props.paging ?? true) ? new sns.Topic(this, 'Pager', { enforceSSL: true }) : undefined;
    if (pager) {
      const why =
        'CloudWatch alarms and EventBridge cannot publish to a topic under the AWS-managed SNS key; a customer key with a policy for both is the owner’s choice';
      Validations.of(pager).acknowledge({ id: 'AwsSolutions-SNS2', reason: why });
      skipCheckov(pager, 'CKV_AWS_26', why);
    }
    this.controller = new BlueGreenController(this, 'Controller', {
      namePrefix: props.namePrefix,
      alarmActions: pager ? [new cloudwatchActions.SnsAction(pager)] : undefined,
      notificationTopic: pager,
      cluster,
      image: props.workerImage
        ? workerImage(this, props.workerImage)
        : ecs.ContainerImage.fromAsset(REPO_ROOT, { file: 'docker/Dockerfile' }),
      services: [this.web],
      operators: [operator],
      // With a CloudTrail trail logging in the account, a stack update or a console
      // change of the rule or a colour service is undone within seconds; without one,
      // the reconciler's next pass does it.
      reconcileOnRecordedChanges: true,
      assignPublicIp: true,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
    });
    this.controller.grantOperator(operator);
    Validations.of(operator).acknowledge({ id: 'AwsSolutions-IAM5[Resource::*]', reason: UNSCOPED_REASON });

    const out = (id: string, value: string, description: string) => new CfnOutput(this, id, { value, description });
    out('QueueUrl', this.controller.queue.queueUrl, 'Input queue of the worker');
    out('DeadLetterQueueUrl', this.controller.deadLetterQueue.queueUrl, 'Dead-letter queue');
    out('UndeliveredEventsQueueUrl', this.controller.undeliveredEvents.queueUrl, 'Events EventBridge could not deliver to the queue');
    out('TableName', this.controller.table.tableName, 'Deployment state');
    out('EventBusName', this.controller.bus.eventBusName, 'Operator and outbound events');
    out('WorkerTaskDefinitionArn', this.controller.taskDefinition.taskDefinitionArn, 'Task definition carrying BLUEGREEN_CONFIG_JSON');
    out('ProductionRuleArn', this.web.productionRule.listenerRuleArn, 'The rule whose weights the worker moves');
    out('LoadBalancerDns', alb.loadBalancerDnsName, 'Where the sample service answers');
    out('DashboardName', this.controller.dashboard.dashboardName, 'CloudWatch dashboard');
    out('OperatorRoleArn', operator.roleArn, 'Role operators assume to put operator events');
    out('ClusterName', cluster.clusterName, 'The cluster of the services and the worker');
    out('WorkerServiceName', this.controller.service.serviceName, 'The worker ECS service');
    out('LogGroupName', this.controller.logGroup.logGroupName, 'The worker logs and EMF metrics');

    this.acknowledge();
    skipCheckov(alb, 'CKV_AWS_91', 'Example ALB: access logs need an S3 bucket the owner chooses');
    skipCheckov(alb.connections.securityGroups[0], 'CKV_AWS_260', 'The example serves HTTP on port 80 to the world by design');
    for (const l of [listener, this.web.testListener]) {
      if (!l) continue;
      skipCheckov(l, 'CKV_AWS_2', 'The example has no domain or certificate: HTTP only (use HTTPS with your certificate)');
      skipCheckov(l, 'CKV_AWS_103', 'The example has no domain or certificate: HTTP only (use HTTPS with your certificate)');
    }
  }

  /** cdk-nag findings this example accepts, each with its reason. */
  private acknowledge() {
    const ack = (scope: Construct, id: string, reason: string) => Validations.of(scope).acknowledge({ id, reason });
    ack(this, 'AwsSolutions-VPC7', 'Example VPC: flow logs are the owner’s choice and cost money at idle');
    ack(this, 'AwsSolutions-ELB2', 'Example ALB: access logs need an S3 bucket the owner chooses');
    ack(this, 'AwsSolutions-EC23', 'The production listener is public on port 80 by design; the test listener is open only to the VPC CIDR');
    const execution = (this.web.colours.blue.service.taskDefinition as ecs.FargateTaskDefinition).executionRole;
    if (execution) {
      ack(execution, 'AwsSolutions-IAM5[Resource::*]', 'ecr:GetAuthorizationToken supports no resource-level permission (the grant CDK makes for pulling the image)');
    }
    ack(this, 'AwsSolutions-ECS2', 'Environment variables carry configuration (resource names, ARNs), never secrets');
  }
}
