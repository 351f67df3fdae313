"""moto server, playing the part of ECS that moto leaves out. For the tests only.

moto stores ECS services but never rolls a deployment out: the PRIMARY deployment keeps
its first task definition, nothing runs, and no task is ever registered in a target
group. Here, as ECS does once a rollout finishes, CreateService and UpdateService roll
out at once:

* the service has one deployment, PRIMARY, with the service's task definition and
  desired count, all of it running, rollout COMPLETED;
* its tasks are registered (by IP, one per desired task, new IPs for a new task
  definition) in the target groups of the service's load balancers, replacing the
  tasks registered before; scaled to zero, it has none.

Target health is then what moto's ELBv2 reports for registered targets.

DynamoDB makes each write, conditional writes and transactions included, atomic: two
writers whose conditions both hold for the item as it was can never both succeed. moto
server answers requests on several threads and checks conditions without a lock, so two
concurrent conditional writes can both pass (and a read can see a transaction half
applied). Here DynamoDB operations run one at a time, as DynamoDB's guarantees require.

CloudFormation, as in AWS: an `AWS::ECS::Service` keeps its `LoadBalancers` (moto drops
them, so no task would ever be registered); `Ref` of an `AWS::Events::EventBus` is the bus's name (moto
hands a rule the bus object itself and fails the stack); `Fn::GetAtt` of a target group's
`TargetGroupFullName`, `TargetGroupName` and `LoadBalancerArns`, and of a load balancer's
`LoadBalancerFullName` (the metric dimensions alarms and dashboards use) answer as AWS
does, where moto fails the stack.

EventBridge delivers to an SNS topic target (the stack's notification rule) as it does:
the event, as JSON, published to the topic. moto fails every `PutEvents` on a bus with
such a rule.

SQS `StartMessageMoveTask` (the dead-letter redrive a runbook shows), which moto does not
implement, moves every message of the source queue to the queue whose redrive policy
names it (or to `DestinationArn`) at once, as the task does over time.

Everything else is moto as installed; the worker under test talks to it over HTTP like
to AWS.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT (moto_server's options).
"""

import functools
import json
import sys
import threading
import zlib

from moto.core.utils import utcnow
from moto.dynamodb.models import DynamoDBBackend
from moto.ecs import models as ecs
from moto.elbv2.models import FakeLoadBalancer, FakeTargetGroup, elbv2_backends
from moto.events.models import EventBus, Rule
from moto.sns.models import sns_backends
from moto.utilities.arns import parse_arn
from moto.core.responses import ActionResult
from moto.server import main
from moto.sqs.responses import SQSResponse


def roll_out(backend, service):
    count = service.desired_count or 0
    service.running_count = count
    service.pending_count = 0
    if service.deployments:
        primary = service.deployments[0]
        primary.update(
            {
                "status": "PRIMARY",
                "taskDefinition": service.task_definition,
                "desiredCount": count,
                "runningCount": count,
                "pendingCount": 0,
                "rolloutState": "COMPLETED",
                "rolloutStateReason": f"ECS deployment {primary['id']} completed.",
                "updatedAt": utcnow(),
            }
        )
        del service.deployments[1:]
    elb = elbv2_backends[backend.account_id][backend.region_name]
    seed = zlib.crc32(f"{service.arn}#{service.task_definition}".encode())
    for lb in service.load_balancers or []:
        group = elb.target_groups.get(lb.get("targetGroupArn"))
        if group is None:
            continue
        for target_id in list(group.targets):
            group.deregister([{"Id": target_id}])
        port = lb.get("containerPort") or group.port
        group.register(
            [
                {"Id": f"10.{(seed >> 16) & 255}.{(seed >> 8) & 255}.{10 + i}", "Port": port}
                for i in range(count)
            ]
        )


_create = ecs.EC2ContainerServiceBackend.create_service
_update = ecs.EC2ContainerServiceBackend.update_service


def create_service(self, *args, **kwargs):
    service = _create(self, *args, **kwargs)
    roll_out(self, service)
    return service


def update_service(self, *args, **kwargs):
    service = _update(self, *args, **kwargs)
    roll_out(self, service)
    return service


ecs.EC2ContainerServiceBackend.create_service = create_service
ecs.EC2ContainerServiceBackend.update_service = update_service

_create_from_cloudformation = ecs.Service.create_from_cloudformation_json.__func__


def create_service_from_cloudformation(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    # moto's CloudFormation drops an AWS::ECS::Service's LoadBalancers; ECS registers the
    # service's tasks in those target groups.
    service = _create_from_cloudformation(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
    service.load_balancers = [
        {
            "targetGroupArn": lb.get("TargetGroupArn"),
            "containerName": lb.get("ContainerName"),
            "containerPort": lb.get("ContainerPort"),
        }
        for lb in cloudformation_json["Properties"].get("LoadBalancers", [])
    ]
    roll_out(ecs.ecs_backends[account_id][region_name], service)
    return service


ecs.Service.create_from_cloudformation_json = classmethod(create_service_from_cloudformation)

_dynamodb = threading.RLock()


def one_at_a_time(method):
    @functools.wraps(method)
    def serialized(*args, **kwargs):
        with _dynamodb:
            return method(*args, **kwargs)

    return serialized


for _name in (
    "put_item",
    "get_item",
    "query",
    "scan",
    "update_item",
    "delete_item",
    "transact_write_items",
    "batch_get_item",
    "batch_write_item",
    "transact_get_items",
):
    setattr(DynamoDBBackend, _name, one_at_a_time(getattr(DynamoDBBackend, _name)))

# `Ref` of an AWS::Events::EventBus is its name.
EventBus.physical_resource_id = property(lambda self: self.name)


def _target_group_attribute(self, name):
    # arn:…:targetgroup/<name>/<id> → targetgroup/<name>/<id>
    if name == "TargetGroupFullName":
        return self.arn.split(":")[-1]
    if name == "TargetGroupName":
        return self.name
    if name == "LoadBalancerArns":
        return list(self.load_balancer_arns)
    if name == "TargetGroupArn":
        return self.arn
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

    raise UnformattedGetAttTemplateException()


FakeTargetGroup.get_cfn_attribute = _target_group_attribute
_load_balancer_attribute = FakeLoadBalancer.get_cfn_attribute


def _load_balancer_full_name(self, name):
    # arn:…:loadbalancer/app/<name>/<id> → app/<name>/<id>
    if name == "LoadBalancerFullName":
        return self.arn.split(":loadbalancer/", 1)[1]
    return _load_balancer_attribute(self, name)


FakeLoadBalancer.get_cfn_attribute = _load_balancer_full_name

def start_message_move_task(self):
    # SourceArn: a dead-letter queue; DestinationArn (optional): where to; by default the
    # queue whose redrive policy names the source.
    backend = self.sqs_backend
    source_arn = self._get_param("SourceArn")
    destination_arn = self._get_param("DestinationArn")
    queues = list(backend.queues.values())
    source = next(q for q in queues if q.queue_arn == source_arn)
    if destination_arn:
        destination = next(q for q in queues if q.queue_arn == destination_arn)
    else:
        destination = next(
            q for q in queues if (q.redrive_policy or {}).get("deadLetterTargetArn") == source_arn
        )
    with source._messages_lock:
        moving = list(source._messages)
        source._messages.clear()
    for message in moving:
        backend.send_message(destination.name, message.body)
    return ActionResult({"TaskHandle": f"{source.name}-{len(moving)}-{utcnow().timestamp()}"})


SQSResponse.start_message_move_task = start_message_move_task

_send_to_targets = Rule.send_to_targets


def send_to_targets(self, original_event, transform_input=True):
    # SNS targets here (the event as JSON, as EventBridge publishes it), the rest by moto.
    topics = [t for t in self.targets if parse_arn(t["Arn"]).service == "sns"]
    if topics and self.event_pattern.matches_event(original_event):
        for target in topics:
            arn = parse_arn(target["Arn"])
            sns_backends[arn.account][arn.region].publish(json.dumps(original_event, default=str), arn=target["Arn"])
    if len(topics) == len(self.targets):
        return
    others = type(self).__new__(type(self))
    others.__dict__.update(self.__dict__)
    others.targets = [t for t in self.targets if t not in topics]
    _send_to_targets(others, original_event, transform_input)


Rule.send_to_targets = send_to_targets

if __name__ == "__main__":
    main(sys.argv[1:])
