"""IAM for the emulated stack: moto enforces none, so this module plays it.

It reads the calls a principal really made (moto's request recorder, told apart by the
access key each process was given), works out for each call the IAM action(s), the
resource ARN(s) and the request context AWS would evaluate, and evaluates them against the
identity policies the stack gave that principal (as moto's IAM holds them after the
CloudFormation deployment, every reference resolved).

What AWS documents beyond "the action on the resource" is modelled explicitly:

* actions without resource-level permissions are requested on "*" (a statement must name
  "*" to allow them);
* SCOPE_EXCEPTIONS: calls whose answer depends on the scope of the permission — today
  `DescribeAlarms` for composite alarms, which AWS answers only to a permission scoped to
  "*" ("You can't return information about composite alarms if your
  cloudwatch:DescribeAlarms permission has a narrower scope", CloudWatch API reference);
* implied authorizations: `RegisterTaskDefinition` with roles needs `iam:PassRole` on each
  with `iam:PassedToService` = ecs-tasks.amazonaws.com, and with tags `ecs:TagResource` on
  the new revision with `ecs:CreateAction` = RegisterTaskDefinition; batch SQS calls and
  DynamoDB transactions are authorized per item by the single-item action.

An operation the module does not know fails the check: a new AWS call of the worker has to
be given its resources here before the test passes again.
"""

import base64
import fnmatch
import json
import re
from urllib.parse import parse_qs, urlparse

# Calls AWS authorizes without any permission.
UNAUTHORIZED_OK = {("sts", "GetCallerIdentity")}

# Calls whose result depends on the scope of the permission: the resource to request
# instead of the one named, and why.
SCOPE_EXCEPTIONS = {
    ("cloudwatch", "DescribeAlarms"): (
        "composite alarms are returned only to a cloudwatch:DescribeAlarms permission scoped to *"
        " (CloudWatch API reference, DescribeAlarms)"
    ),
}

SQS_BATCH = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}

# IAM action prefix of each SigV4 signing name.
PREFIX = {"monitoring": "cloudwatch", "elasticloadbalancing": "elasticloadbalancing"}


class Call:
    """One recorded request: who, which operation, its parameters."""

    def __init__(self, access_key, signing_name, operation, params):
        self.access_key = access_key
        self.service = PREFIX.get(signing_name, signing_name)
        self.operation = operation
        self.params = params

    def __repr__(self):
        return f"{self.service}:{self.operation}"


def entries(text):
    """The JSON requests of a moto recording: one per line, though moto's request threads
    append without a lock, so a line may hold two requests written back to back."""
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        at = 0
        while at < len(line):
            while at < len(line) and line[at].isspace():
                at += 1
            if at == len(line):
                break
            entry, at = decoder.raw_decode(line, at)
            yield entry


def parse_recording(text):
    """The calls in a moto recording."""
    calls = []
    for entry in entries(text):
        headers = {k.lower(): v for k, v in entry["headers"].items()}
        auth = headers.get("authorization", "")
        m = re.search(r"Credential=([^/]+)/\d+/[^/]+/([^/]+)/aws4_request", auth)
        if not m:
            continue
        access_key, signing_name = m.groups()
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        target = headers.get("x-amz-target")
        query = parse_qs(urlparse(entry["url"]).query)
        if target:
            operation = target.split(".")[-1]
            params = json.loads(body) if body else {}
        elif "/operation/" in entry["url"]:  # Smithy RPC v2: .../service/X/operation/Op
            operation = entry["url"].rsplit("/operation/", 1)[1].split("?")[0]
            params = {}
        else:
            form = parse_qs(body, keep_blank_values=True) if body else query
            operation = (form.get("Action") or [""])[0]
            params = {k: v if len(v) > 1 else v[0] for k, v in form.items()}
        calls.append(Call(access_key, signing_name, operation, params))
    return calls


def members(params, prefix):
    """Values of a query-protocol list `prefix.member.N` (or `prefix.N`)."""
    out = []
    for key, value in sorted(params.items()):
        if re.fullmatch(rf"{re.escape(prefix)}(\.member)?\.\d+", key):
            out.append(value)
    return out


class Requests:
    """What AWS authorizes for a call: a list of (action, resource, context)."""

    def __init__(self, region, account):
        self.region = region
        self.account = account

    def arn(self, service, resource):
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"

    def of(self, call):
        p = call.params
        s, op = call.service, call.operation
        action = f"{s}:{op}"
        if (s, op) in UNAUTHORIZED_OK:
            return []
        if (s, op) == ("cloudwatch", "DescribeAlarms"):
            if "CompositeAlarm" in members(p, "AlarmTypes") or not members(p, "AlarmNames"):
                return [(action, "*", {})]  # SCOPE_EXCEPTIONS; or no names: every alarm
            return [(action, self.arn("cloudwatch", f"alarm:{name}"), {}) for name in members(p, "AlarmNames")]
        if s == "sqs":
            queue = p.get("QueueUrl", "")
            name = queue.rstrip("/").rsplit("/", 1)[-1]
            return [(f"sqs:{SQS_BATCH.get(op, op)}", self.arn("sqs", name), {})]
        if s == "dynamodb":
            if op == "TransactWriteItems":
                kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}
                out = []
                for item in p["TransactItems"]:
                    (kind, body), = item.items()
                    out.append((f"dynamodb:{kinds[kind]}", self.arn("dynamodb", f"table/{body['TableName']}"), {}))
                return out
            if op in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "DescribeTable"):
                return [(action, self.arn("dynamodb", f"table/{p['TableName']}"), {})]
        if s == "events" and op == "PutEvents":
            out = []
            for entry in p["Entries"]:
                bus = entry.get("EventBusName", "default")
                bus_arn = bus if bus.startswith("arn:") else self.arn("events", f"event-bus/{bus}")
                out.append((action, bus_arn, {"events:source": entry.get("Source"), "events:detail-type": entry.get("DetailType")}))
            return out
        if s == "elasticloadbalancing":
            if op == "ModifyRule":
                return [(action, p["RuleArn"], {})]
            if op == "ModifyListener":
                return [(action, p["ListenerArn"], {})]
            if op in ("DescribeRules", "DescribeListeners", "DescribeTargetHealth", "DescribeTargetGroups", "DescribeLoadBalancers"):
                return [(action, "*", {})]
        if s == "ecs":
            def cluster_name(value):
                return (value or "default").rsplit("/", 1)[-1]

            def service_arn(cluster, service):
                if service.startswith("arn:"):
                    return service
                return self.arn("ecs", f"service/{cluster_name(cluster)}/{service}")

            if op == "UpdateService":
                return [(action, service_arn(p.get("cluster"), p["service"]), {})]
            if op == "DescribeServices":
                return [(action, service_arn(p.get("cluster"), name), {}) for name in p["services"]]
            if op in ("DescribeTaskDefinition", "ListTaskDefinitions"):
                return [(action, "*", {})]
            if op == "ListTagsForResource":
                return [(action, p["resourceArn"], {})]
            if op == "RegisterTaskDefinition":
                out = [(action, "*", {})]
                for key in ("taskRoleArn", "executionRoleArn"):
                    if p.get(key):
                        out.append(("iam:PassRole", p[key], {"iam:PassedToService": "ecs-tasks.amazonaws.com"}))
                if p.get("tags"):
                    # The revision number is not known before the answer: any revision of the family.
                    revision = self.arn("ecs", f"task-definition/{p['family']}:1")
                    out.append(("ecs:TagResource", revision, {"ecs:CreateAction": "RegisterTaskDefinition"}))
                return out
        if s == "ecr" and op == "DescribeImages":
            account = p.get("registryId", self.account)
            return [(action, f"arn:aws:ecr:{self.region}:{account}:repository/{p['repositoryName']}", {})]
        raise AssertionError(f"the IAM evaluator does not know {action} (params {sorted(p)}): give it its resources in iam_eval.py")


def _list(x):
    return x if isinstance(x, list) else [x]


def _like(pattern, value, case_insensitive=False):
    if case_insensitive:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(conditions, context):
    for operator, tests in conditions.items():
        base = operator.removesuffix("IfExists")
        if_exists = operator.endswith("IfExists")
        for key, expected in tests.items():
            expected = [str(v) for v in _list(expected)]
            value = context.get(key)
            negated = base in ("StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike")
            if value is None:
                if if_exists or negated:
                    continue
                return False
            if base in ("StringEquals", "StringNotEquals"):
                match = value in expected
            elif base in ("StringLike", "StringNotLike", "ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
                match = any(_like(e, value) for e in expected)
            elif base == "Bool":
                match = str(value).lower() in [e.lower() for e in expected]
            else:
                raise AssertionError(f"the IAM evaluator does not know the condition operator {operator}")
            if match == negated:
                return False
    return True


def _applies(statement, action, resource, context):
    if "Action" in statement and not any(_like(a, action, case_insensitive=True) for a in _list(statement["Action"])):
        return False
    if "NotAction" in statement and any(_like(a, action, case_insensitive=True) for a in _list(statement["NotAction"])):
        return False
    if "Resource" in statement and not any(_like(r, resource) for r in _list(statement["Resource"])):
        return False
    if "NotResource" in statement and any(_like(r, resource) for r in _list(statement["NotResource"])):
        return False
    return _condition_holds(statement.get("Condition", {}), context)


def decide(policies, action, resource, context):
    """"Allow", "ExplicitDeny" or "ImplicitDeny" for one request under the identity
    policies given (documents as dicts)."""
    statements = [st for doc in policies for st in _list(doc["Statement"])]
    if any(st["Effect"] == "Deny" and _applies(st, action, resource, context) for st in statements):
        return "ExplicitDeny"
    if any(st["Effect"] == "Allow" and _applies(st, action, resource, context) for st in statements):
        return "Allow"
    return "ImplicitDeny"


def role_policies(iam, role_name):
    """The inline and attached managed policy documents of a role, as moto's IAM holds them."""
    docs = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        docs.append(json.loads(doc) if isinstance(doc, str) else doc)
    for attached in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"])
        doc = version["PolicyVersion"]["Document"]
        docs.append(json.loads(doc) if isinstance(doc, str) else doc)
    return docs


def _names_principal(statement, principal):
    """Whether a resource policy statement's `Principal` covers the caller `principal`
    (a role ARN)."""
    named = statement.get("Principal")
    if named == "*":
        return True
    aws = _list((named or {}).get("AWS", []))
    return "*" in aws or principal in aws


def denied(calls, policies, requests, principal=None, resource_policies=()):
    """Every (call, action, resource, decision) the policies do not allow, and how many
    requests were evaluated. `resource_policies` maps a resource ARN to the statements of
    its resource-based policy (an event bus's): within one account a request is allowed
    when the identity or the resource policy allows it, and refused when either denies
    it explicitly; `principal` is the caller's role ARN (`aws:PrincipalArn`)."""
    refused, evaluated = [], 0
    for call in calls:
        for action, resource, context in requests.of(call):
            evaluated += 1
            context = dict(context, **({"aws:PrincipalArn": principal} if principal else {}))
            attached = [st for st in dict(resource_policies).get(resource, []) if _names_principal(st, principal)]
            decision = decide([*policies, {"Statement": attached}], action, resource, context)
            if decision != "Allow":
                refused.append((call, action, resource, decision))
    return refused, evaluated


def self_check(requests):
    """The evaluator can refuse: checks of its own rules against small policies."""
    alarm = Call("k", "monitoring", "DescribeAlarms", {"AlarmTypes.member.1": "CompositeAlarm", "AlarmNames.member.1": "a"})
    scoped = [{"Statement": [{"Effect": "Allow", "Action": "cloudwatch:DescribeAlarms", "Resource": requests.arn("cloudwatch", "alarm:a")}]}]
    everywhere = [{"Statement": [{"Effect": "Allow", "Action": "cloudwatch:DescribeAlarms", "Resource": "*"}]}]
    assert denied([alarm], scoped, requests)[0], "a DescribeAlarms scoped to the alarm must not return composite alarms"
    assert not denied([alarm], everywhere, requests)[0]
    metric_alarm = Call("k", "monitoring", "DescribeAlarms", {"AlarmTypes.member.1": "MetricAlarm", "AlarmNames.member.1": "a"})
    assert not denied([metric_alarm], scoped, requests)[0], "metric alarms may be read under a scoped permission"
    register = Call("k", "ecs", "RegisterTaskDefinition", {"family": "web", "taskRoleArn": "arn:aws:iam::1:role/t", "tags": [{"key": "a", "value": "b"}]})
    base = {"Effect": "Allow", "Action": "ecs:RegisterTaskDefinition", "Resource": "*"}
    tag = {"Effect": "Allow", "Action": "ecs:TagResource", "Resource": requests.arn("ecs", "task-definition/web:*"),
           "Condition": {"StringEquals": {"ecs:CreateAction": "RegisterTaskDefinition"}}}
    pass_role = {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::1:role/t",
                 "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}
    assert not denied([register], [{"Statement": [base, tag, pass_role]}], requests)[0]
    wrong_service = dict(pass_role, Condition={"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}})
    assert denied([register], [{"Statement": [base, tag, wrong_service]}], requests)[0], "PassRole to another service must not allow"
    assert denied([register], [{"Statement": [base, pass_role]}], requests)[0], "tags need ecs:TagResource"
    put = Call("k", "events", "PutEvents", {"Entries": [{"EventBusName": "b", "Source": "bluegreen.manual"}]})
    allow = {"Effect": "Allow", "Action": "events:PutEvents", "Resource": requests.arn("events", "event-bus/b")}
    deny = {"Effect": "Deny", "Action": "events:PutEvents", "Resource": "*", "Condition": {"StringEquals": {"events:source": "bluegreen.manual"}}}
    assert not denied([put], [{"Statement": [allow]}], requests)[0]
    assert denied([put], [{"Statement": [allow, deny]}], requests)[0][0][3] == "ExplicitDeny"
    # A bus policy: its deny refuses what the identity allows; its allow lets in what the
    # identity does not name; a statement for another principal does neither.
    bus = requests.arn("events", "event-bus/b")
    only_ops = {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "events:PutEvents", "Resource": bus,
                "Condition": {"StringEquals": {"events:source": "bluegreen.manual"}, "ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::1:role/ops"}}}
    ops_may = {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:role/ops"}, "Action": "events:PutEvents", "Resource": bus}
    assert denied([put], [{"Statement": [allow]}], requests, "arn:aws:iam::1:role/worker", {bus: [only_ops]})[0][0][3] == "ExplicitDeny"
    assert not denied([put], [{"Statement": [allow]}], requests, "arn:aws:iam::1:role/ops", {bus: [only_ops]})[0]
    assert not denied([put], [], requests, "arn:aws:iam::1:role/ops", {bus: [ops_may]})[0]
    assert denied([put], [], requests, "arn:aws:iam::1:role/worker", {bus: [ops_may]})[0]
    try:
        requests.of(Call("k", "ecs", "DeleteService", {}))
    except AssertionError:
        pass
    else:
        raise AssertionError("an unknown operation must fail the check")
