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

Everything else is moto as installed; the worker under test talks to it over HTTP like
to AWS.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT (moto_server's options).
"""

import functools
import sys
import threading
import zlib

from moto.core.utils import utcnow
from moto.dynamodb.models import DynamoDBBackend
from moto.ecs import models as ecs
from moto.elbv2.models import elbv2_backends
from moto.server import main


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

if __name__ == "__main__":
    main(sys.argv[1:])
