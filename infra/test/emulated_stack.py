"""The example stack on an emulator: synthesized by CDK, deployed to moto server's
CloudFormation, then the worker binary, configured only from the stack's outputs and the
configuration the construct injected into its task definition, completes a deployment
(push -> promote -> 0/100) and rolls the next one back on an alarm. Every AWS call the
worker and the operator commands made is then evaluated against the IAM policies the stack
gave their roles (iam_eval.py: moto enforces no IAM).

moto's CloudFormation lacks some resource types. Each gap is named in GAPS: the test
creates what the worker needs through the API (alarms) or drops what the emulator does not
enforce (policies), and rewrites the template's references to the API-created resources.
Nothing the worker reports is overwritten: the test plays AWS (an ECR push event, an alarm
going to ALARM), never the worker.

Usage: python infra/test/emulated_stack.py MOTO_ENDPOINT BLUEGREEN_BINARY TEMPLATE
(scripts/test runs it after synthesizing with `-c emulator=true`).
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iam_eval  # noqa: E402
import runbooks  # noqa: E402

ACCOUNT = "123456789012"  # moto's default account: the worker sends no account header
REGION = "us-east-1"
STACK = "BluegreenExample"
# The access keys the worker and the operator commands sign with: the recorded calls are
# told apart by them and evaluated against the worker's and the operator's role.
WORKER_KEY = "AKIAWORKERBLUEGREEN01"
OPERATOR_KEY = "AKIAOPERATORBLUEGRN1"

# Resource types moto's CloudFormation does not implement, and what the test does instead.
GAPS = {
    "AWS::CloudWatch::Alarm": "created with PutMetricAlarm under the same name; moto never evaluates alarms, so the test sets their state",
    "AWS::CloudWatch::CompositeAlarm": "created with PutMetricAlarm under the same name (moto has no composite alarms); its state is set by the test",
    "AWS::Events::EventBusPolicy": "dropped: moto does not enforce bus resource policies",
    "AWS::SQS::QueuePolicy": "dropped: moto delivers rule targets to queues without a queue policy",
    "AWS::EC2::SecurityGroupEgress": "dropped: no packets flow in the emulator",
}


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def wait_for(what, deadline_s, probe, interval=0.25):
    """Polls `probe` until it returns a truthy value; fails naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what} (last: {last!r})")


def fill_gaps(template, cloudwatch):
    """Creates the alarms through the API, drops unenforced policies, and rewrites every
    reference to a removed resource to the API-created value. Returns the gaps met."""
    resources = template["Resources"]
    met = {}
    values = {}  # logical id -> {"Ref": ..., "Arn": ...}
    for logical, r in list(resources.items()):
        kind = r["Type"]
        if kind not in GAPS:
            continue
        met.setdefault(kind, []).append(logical)
        if kind in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm"):
            name = r["Properties"]["AlarmName"]
            cloudwatch.put_metric_alarm(
                AlarmName=name,
                AlarmDescription=str(r["Properties"].get("AlarmDescription", "")),
                Namespace="Bluegreen/Emulator",
                MetricName="StandIn",
                Statistic="Maximum",
                Period=60,
                EvaluationPeriods=1,
                Threshold=1,
                ComparisonOperator="GreaterThanThreshold",
            )
            cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="created by the test")
            values[logical] = {"Ref": name, "Arn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"}
        del resources[logical]

    def rewrite(node):
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in values:
                return values[node["Ref"]]["Ref"]
            if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"][0] in values:
                return values[node["Fn::GetAtt"][0]][node["Fn::GetAtt"][1]]
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    template["Resources"] = rewrite(resources)
    template["Outputs"] = rewrite(template.get("Outputs", {}))
    # The CDK bootstrap check reads an SSM parameter the emulator does not have.
    template.get("Rules", {}).pop("CheckBootstrapVersion", None)
    template.get("Parameters", {}).pop("BootstrapVersion", None)
    return met


def check_emf(lines, namespace):
    """Checks each EMF document against the specification
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html);
    returns the metric names seen with their values, and every (name, dimension set) shape."""
    names = {}
    shapes = set()
    emf = [line for line in lines if line.startswith("{")]
    others = [line for line in lines if not line.startswith("{")]
    assert others == ["worker stopped"], f"stdout carries more than EMF documents: {others[:5]}"
    assert emf, "no EMF document on stdout"
    now_ms = time.time() * 1000
    for line in emf:
        doc = json.loads(line)
        aws = doc["_aws"]
        assert isinstance(aws["Timestamp"], int) and now_ms - 3_600_000 < aws["Timestamp"] <= now_ms + 60_000, aws["Timestamp"]
        directives = aws["CloudWatchMetrics"]
        assert isinstance(directives, list) and directives, aws
        for directive in directives:
            assert directive["Namespace"] == namespace and 1 <= len(namespace) <= 1024
            assert isinstance(directive["Dimensions"], list)
            for dimension_set in directive["Dimensions"]:
                assert len(dimension_set) <= 30, dimension_set
                for key in dimension_set:
                    assert isinstance(doc.get(key), str) and doc[key], f"dimension {key} is not a string member: {line}"
            assert 1 <= len(directive["Metrics"]) <= 100, directive
            for metric in directive["Metrics"]:
                name = metric["Name"]
                assert 1 <= len(name) <= 1024
                assert metric.get("Unit", "None") in EMF_UNITS, metric
                value = doc[name]
                values = value if isinstance(value, list) else [value]
                assert 1 <= len(values) <= 100 and all(isinstance(v, (int, float)) for v in values), f"{name}: {value}"
                names.setdefault(name, []).append(values)
                for dimension_set in directive["Dimensions"] or [[]]:
                    shapes.add((name, frozenset(dimension_set)))
    return names, shapes


def metric_uses(template, namespace):
    """Every (metric, dimension names) of `namespace` that an alarm or a dashboard widget of
    the template reads, with where; and the ones its metric filters produce from the logs."""
    uses, filtered = [], set()

    def add(metric, where):
        if metric.get("Namespace") == namespace:
            dims = frozenset(d["Name"] for d in metric.get("Dimensions", []))
            uses.append((metric["MetricName"], dims, where))

    for logical, r in template["Resources"].items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::CloudWatch::Alarm":
            if "MetricName" in props:
                add(props, f"alarm {props.get('AlarmName', logical)}")
            for m in props.get("Metrics", []):
                if "MetricStat" in m:
                    add(m["MetricStat"]["Metric"], f"alarm {props.get('AlarmName', logical)}")
        elif r["Type"] == "AWS::Logs::MetricFilter":
            for t in props["MetricTransformations"]:
                if t["MetricNamespace"] == namespace:
                    filtered.add((t["MetricName"], frozenset(d["Key"] for d in t.get("Dimensions", []))))
        elif r["Type"] == "AWS::CloudWatch::Dashboard":
            body = props["DashboardBody"]
            if isinstance(body, dict):  # {"Fn::Join": ["", [parts]]}: tokens become a placeholder
                body = "".join(part if isinstance(part, str) else "TOKEN" for part in body["Fn::Join"][1])
            for widget in json.loads(body)["widgets"]:
                previous = []
                for row in widget.get("properties", {}).get("metrics", []):
                    if isinstance(row[0], dict):
                        continue  # a math expression: its inputs are rows of their own
                    fields = [f for f in row if not isinstance(f, dict)]
                    fields = [previous[i] if f == "." and i < len(previous) else f for i, f in enumerate(fields)]
                    previous = fields
                    dims = [{"Name": fields[i]} for i in range(2, len(fields) - 1, 2)]
                    add({"Namespace": fields[0], "MetricName": fields[1], "Dimensions": dims},
                        f"dashboard widget {widget['properties'].get('title', '?')!r}")
    return uses, filtered


def check_metric_uses(uses, filtered, shapes):
    """Every alarm and widget reads a metric in a shape the worker emitted (or a metric
    filter produces): in CloudWatch a metric with other dimensions is another metric."""
    emitted = shapes | filtered
    missing = sorted({(name, tuple(sorted(dims)), where) for name, dims, where in uses if (name, dims) not in emitted})
    assert uses, "no alarm or widget reads the worker's namespace"
    assert not missing, "read but never emitted in that shape: " + "; ".join(
        f"{where}: {name} {list(dims)} (emitted: {sorted(list(d) for n, d in emitted if n == name)})" for name, dims, where in missing
    )


EMF_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits",
    "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
    "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}


def recorder(endpoint, verb):
    """moto's request recorder: reset-recording, start-recording, download-recording."""
    import urllib.request

    method = "GET" if verb == "download-recording" else "POST"
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/{verb}", method=method, data=None if method == "GET" else b"")) as r:
        return r.read().decode()


def physical_by_logical(cfn):
    """Every stack resource's physical id by its logical id (None where moto made none)."""
    return {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=STACK)
        for r in page["StackResourceSummaries"]
        if "LogicalResourceId" in r
    }


def physical(cfn, logical_prefix, kind):
    """The physical id of the one stack resource of `kind` whose logical id starts with the prefix."""
    found = [
        r["PhysicalResourceId"]
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=STACK)
        for r in page["StackResourceSummaries"]
        if r.get("ResourceType") == kind and r["LogicalResourceId"].startswith(logical_prefix)
    ]
    assert len(found) == 1, (logical_prefix, kind, found)
    return found[0]


def bus_policies(cfn, iam, template, requests):
    """The event bus's resource policy statements, from the synthesized template (moto
    does not keep them), with the roles and the bus named by their ARNs on the stack."""
    physical_ids = physical_by_logical(cfn)
    resources = template["Resources"]

    def resolve(value):
        if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
            logical, attribute = value["Fn::GetAtt"]
            kind = resources[logical]["Type"]
            if (kind, attribute) == ("AWS::IAM::Role", "Arn"):
                return iam.get_role(RoleName=physical_ids[logical])["Role"]["Arn"]
            if (kind, attribute) == ("AWS::Events::EventBus", "Arn"):
                return requests.arn("events", f"event-bus/{resources[logical]['Properties']['Name']}")
            raise AssertionError(f"cannot resolve {value}")
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    out = {}
    for resource in resources.values():
        if resource["Type"] == "AWS::Events::EventBusPolicy":
            statement = resolve(resource["Properties"]["Statement"])
            for arn in iam_eval._list(statement["Resource"]):
                out.setdefault(arn, []).append(statement)
    assert out, "the template has no event bus policy"
    return out


def check_iam(endpoint, cfn, iam, requests, template):
    """Every call the worker and the operator commands made is allowed by their role's
    policies and the event bus's resource policy."""
    iam_eval.self_check(requests)
    calls = iam_eval.parse_recording(recorder(endpoint, "download-recording"))
    on_bus = bus_policies(cfn, iam, template, requests)
    for key, who, role_prefix in [(WORKER_KEY, "worker", "ControllerWorkerRole"), (OPERATOR_KEY, "operator", "Operator")]:
        theirs = [c for c in calls if c.access_key == key]
        role = physical(cfn, role_prefix, "AWS::IAM::Role")
        policies = iam_eval.role_policies(iam, role)
        role_arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        refused, evaluated = iam_eval.denied(theirs, policies, requests, role_arn, on_bus)
        operations = sorted({repr(c) for c in theirs})
        assert theirs and evaluated, f"no recorded call of the {who}"
        assert not refused, f"the {who}'s role does not allow: " + "; ".join(
            f"{c!r} -> {action} on {resource} ({decision}{'; ' + iam_eval.SCOPE_EXCEPTIONS[(c.service, c.operation)] if (c.service, c.operation) in iam_eval.SCOPE_EXCEPTIONS else ''})"
            for c, action, resource, decision in refused[:10]
        )
        print(f"IAM: {evaluated} requests of the {who} ({len(operations)} operations) allowed by its role and the bus policy: {', '.join(operations)}")


def replay_protected_update(cfn, ecs, elb, template):
    """Applies the template state of every protected resource (metadata
    `bluegreen:protected`) as a CloudFormation update of it does: an ECS service gets its
    template's task definition again (and its DesiredCount, if it had one), a listener rule
    its template's actions. Returns the roles replayed."""
    physical_ids = physical_by_logical(cfn)

    def resolve(value):
        if isinstance(value, dict) and set(value) == {"Ref"}:
            return physical_ids[value["Ref"]]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    played = []
    for logical, resource in template["Resources"].items():
        role = resource.get("Metadata", {}).get("bluegreen:protected")
        if not role:
            continue
        props = resolve(resource["Properties"])
        if resource["Type"] == "AWS::ECS::Service":
            extra = {"desiredCount": props["DesiredCount"]} if "DesiredCount" in props else {}
            ecs.update_service(cluster=props["Cluster"], service=props["ServiceName"], taskDefinition=props["TaskDefinition"], **extra)
        elif resource["Type"] == "AWS::ElasticLoadBalancingV2::ListenerRule":
            elb.modify_rule(RuleArn=physical_ids[logical], Actions=props["Actions"])
        else:
            raise AssertionError(f"no replay for protected {resource['Type']} {logical}")
        played.append(role)
    return played


def set_weights(elb, rule_arn, weights):
    """Writes the production rule as someone other than the worker would."""
    groups = [{"TargetGroupArn": arn, "Weight": weight} for arn, weight in weights.items()]
    elb.modify_rule(RuleArn=rule_arn, Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}])


def production_weights(elb, rule_arn):
    rule = elb.describe_rules(RuleArns=[rule_arn])["Rules"][0]
    forward = next(a for a in rule["Actions"] if a["Type"] == "forward")
    return {g["TargetGroupArn"]: g["Weight"] for g in forward["ForwardConfig"]["TargetGroups"]}


def main(endpoint, binary, template_path):
    binary = os.path.abspath(binary)
    cfn = client("cloudformation", endpoint)
    cloudwatch = client("cloudwatch", endpoint)
    ecs = client("ecs", endpoint)
    elb = client("elbv2", endpoint)
    ecr = client("ecr", endpoint)
    events = client("events", endpoint)
    sqs = client("sqs", endpoint)
    iam = client("iam", endpoint)

    with open(template_path) as f:
        template = json.load(f)
    synthesized = json.loads(json.dumps(template))  # fill_gaps edits the template
    gaps = fill_gaps(template, cloudwatch)
    for kind, ids in sorted(gaps.items()):
        print(f"gap: {kind} x{len(ids)}: {GAPS[kind]}")
    assert "AWS::CloudWatch::CompositeAlarm" in gaps, "the template has no composite rollback alarm"

    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    stack = wait_for(
        "the stack to be created",
        120,
        lambda: next(
            (s for s in cfn.describe_stacks(StackName=STACK)["Stacks"] if not s["StackStatus"].endswith("IN_PROGRESS")),
            None,
        ),
    )
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    print("outputs:", json.dumps(outputs, indent=1))
    recorder(endpoint, "reset-recording")
    recorder(endpoint, "start-recording")

    # The worker's configuration is exactly what the construct injected.
    task = ecs.describe_task_definition(taskDefinition=outputs["WorkerTaskDefinitionArn"])["taskDefinition"]
    container = next(c for c in task["containerDefinitions"] if c["name"] == "worker")
    env = {e["name"]: e["value"] for e in container["environment"]}
    config = json.loads(env["BLUEGREEN_CONFIG_JSON"])
    assert config["worker"]["queue_url"] == outputs["QueueUrl"], config["worker"]
    assert config["worker"]["table"] == outputs["TableName"]
    assert config["worker"]["event_bus"] == outputs["EventBusName"]
    web = config["services"][0]
    assert web["production_listener_rule_arn"] == outputs["ProductionRuleArn"]
    assert container["readonlyRootFilesystem"] is True and container["command"] == ["worker"]

    work = tempfile.mkdtemp(prefix="bluegreen-stack-")
    config_file = os.path.join(work, "config.json")
    with open(config_file, "w") as f:
        f.write(env["BLUEGREEN_CONFIG_JSON"])
    validated = subprocess.run([binary, "validate", "config", config_file], capture_output=True, text=True)
    assert validated.returncode == 0, f"bluegreen validate config refused the injected configuration:\n{validated.stdout}{validated.stderr}"
    print(validated.stdout.strip())

    # Outbound events, seen from outside: a queue subscribed to the controller's bus.
    audit = sqs.create_queue(QueueName=f"audit-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    audit_arn = sqs.get_queue_attributes(QueueUrl=audit, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="audit", EventBusName=outputs["EventBusName"], EventPattern=json.dumps({"source": [config["worker"]["source"]]}))
    events.put_targets(Rule="audit", EventBusName=outputs["EventBusName"], Targets=[{"Id": "audit", "Arn": audit_arn}])
    seen = []

    def outbound(detail_type, deployment=None):
        for m in sqs.receive_message(QueueUrl=audit, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", []):
            seen.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=audit, ReceiptHandle=m["ReceiptHandle"])
        return next(
            (e for e in seen if e["detail-type"] == detail_type and deployment in (None, e["detail"].get("deploymentId"))),
            None,
        )

    # The pager: what the notification rule publishes to the stack's topic, seen from a
    # queue subscribed to it (raw delivery: the event itself).
    pager = physical(cfn, "Pager", "AWS::SNS::Topic")
    pages = sqs.create_queue(QueueName=f"pages-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    pages_arn = sqs.get_queue_attributes(QueueUrl=pages, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    client("sns", endpoint).subscribe(TopicArn=pager, Protocol="sqs", Endpoint=pages_arn, Attributes={"RawMessageDelivery": "true"})

    def notified(detail_type):
        got = sqs.receive_message(QueueUrl=pages, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        notified.seen.extend(json.loads(m["Body"]) for m in got)
        return [e for e in notified.seen if e.get("detail-type") == detail_type]

    notified.seen = []

    blue_tg, green_tg = web["blue_target_group_arn"], web["green_target_group_arn"]
    rule = outputs["ProductionRuleArn"]
    assert production_weights(elb, rule) == {blue_tg: 100, green_tg: 0}

    def push(tag):
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023, "digest": "sha256:" + uuid.uuid4().hex * 2},
            # moto derives the image digest from the layer digests: one layer per tag.
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}],
            "annotations": {"tag": tag},
        }
        digest = ecr.put_image(repositoryName=web["ecr_repository"], imageManifest=json.dumps(manifest), imageTag=tag)["image"]["imageId"]["imageDigest"]
        put(None, "aws.ecr", "ECR Image Action", {"result": "SUCCESS", "repository-name": web["ecr_repository"], "image-digest": digest, "action-type": "PUSH", "image-tag": tag})
        return digest

    def put(bus, source, detail_type, detail, resources=()):
        entry = {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail), "Resources": list(resources)}
        if bus:
            entry["EventBusName"] = bus
        out = events.put_events(Entries=[entry])
        assert out["FailedEntryCount"] == 0, out

    log_path = os.path.join(work, "worker.log")
    worker_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": work,
        "TMPDIR": work,
        "BLUEGREEN_CONFIG_JSON": env["BLUEGREEN_CONFIG_JSON"],
        "BLUEGREEN_METRICS_NAMESPACE": env.get("BLUEGREEN_METRICS_NAMESPACE", "Bluegreen"),
        "BLUEGREEN_LOG": os.environ.get("BLUEGREEN_TEST_LOG") or env.get("BLUEGREEN_LOG", "info"),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": WORKER_KEY,
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
    }
    operator_env = dict(worker_env, AWS_ACCESS_KEY_ID=OPERATOR_KEY)

    def operator(*args):
        """A `bluegreen` operator command as the operator role would run it."""
        done = subprocess.run([binary, *args], env=operator_env, capture_output=True, text=True, cwd=work, timeout=60)
        assert done.returncode == 0, f"bluegreen {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout
    metrics_path = os.path.join(work, "stdout")
    with open(log_path, "w") as log, open(metrics_path, "w") as stdout:
        # The worker logs JSON on stderr and writes its EMF metrics on stdout.
        worker = subprocess.Popen([binary, "worker", "--wait", "1s", "--reconcile-every", "5s"], env=worker_env, stdout=stdout, stderr=log, cwd=work)
    try:
        # 1. A push deploys to green: 50 % waits for promote, the operator promotes on the
        #    controller's bus, and the deployment ends at 0/100.
        push("release-1")
        first = wait_for("Traffic Shifted to 50 %", 90, lambda: production_weights(elb, rule) == {blue_tg: 50, green_tg: 50} and outbound("Traffic Shifted"))
        deployment = first["detail"]["deploymentId"]
        operator("promote", "web", "--deployment", deployment, "--by", "emulated-stack-test")
        wait_for("Deployment Succeeded", 90, lambda: outbound("Deployment Succeeded", deployment))
        assert production_weights(elb, rule) == {blue_tg: 0, green_tg: 100}
        print(f"deployment {deployment}: succeeded, production 0/100")

        # 2. The next push goes to blue; its rollback alarm fires at 50 %: production goes
        #    back to green alone.
        push("release-2")
        def second_at_half():
            shifted = [e for e in seen if e["detail-type"] == "Traffic Shifted" and e["detail"]["deploymentId"] != deployment]
            outbound("Traffic Shifted")  # drains the audit queue into `seen`
            return production_weights(elb, rule) == {blue_tg: 50, green_tg: 50} and shifted and shifted[-1]

        second = wait_for("the second deployment at 50 %", 90, second_at_half)["detail"]["deploymentId"]
        alarm = web["rollback_alarms"]["blue"][0]  # the target colour's composite
        cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="Threshold Crossed: the test")
        put(None, "aws.cloudwatch", "CloudWatch Alarm State Change", {
            "alarmName": alarm,
            "state": {"value": "ALARM", "reason": "Threshold Crossed", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime())},
            "previousState": {"value": "OK", "reason": "Threshold not crossed", "timestamp": "2026-12-01T00:00:00.000+0000"},
            "configuration": {"metrics": []},
        }, resources=[f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{alarm}"])  # as CloudWatch sends it
        wait_for("Deployment Rolled Back", 90, lambda: outbound("Deployment Rolled Back", second))
        assert production_weights(elb, rule) == {blue_tg: 0, green_tg: 100}
        services = {s["serviceName"]: s for s in ecs.describe_services(cluster=web["cluster"], services=[web["blue_service"], web["green_service"]])["services"]}
        assert services[web["blue_service"]]["desiredCount"] == 0, services[web["blue_service"]]
        print(f"deployment {second}: rolled back on {alarm}, production 0/100 on green")
        # The operator's view: the alarm that fired reads as ALARM (not UNKNOWN).
        (web_status,) = json.loads(operator("status", "web", "--output", "json"))["services"]
        states = {a["name"]: a["state"] for a in web_status["alarms"]}
        assert states.get(alarm) == "ALARM", states
        operator("history", "web")

        # 3. A change behind the worker's back (a stack update, a console click): the rule
        #    goes to blue alone while green is live. The reconciler finds the drift,
        #    announces it and writes the live weights back.
        set_weights(elb, rule, {blue_tg: 100, green_tg: 0})
        wait_for("Weight Drift Detected", 60, lambda: outbound("Weight Drift Detected"))
        wait_for("the live weights written back", 60, lambda: production_weights(elb, rule) == {blue_tg: 0, green_tg: 100})
        print("drift: production put on blue behind the worker's back, written back to 0/100")

        # 3b. A change to the live colour's service behind the worker's back (what a stack
        #     update that re-applies a colour service's template does): green, live, is put
        #     on the blue service's revision with no tasks. Production never moves; the
        #     reconciler announces it and puts the deployed revision and its count back.
        def green_service():
            return ecs.describe_services(cluster=web["cluster"], services=[web["green_service"]])["services"][0]
        before = green_service()
        other = ecs.describe_services(cluster=web["cluster"], services=[web["blue_service"]])["services"][0]["taskDefinition"]
        assert other != before["taskDefinition"]
        ecs.update_service(cluster=web["cluster"], service=web["green_service"], taskDefinition=other, desiredCount=0)
        drifted = wait_for("Capacity Drift Detected", 60, lambda: outbound("Capacity Drift Detected"))["detail"]
        capacity = drifted["capacity"]
        assert capacity["color"] == "green" and capacity["found"]["desired"] == 0, drifted
        assert capacity["expectedTaskDefinition"] == before["taskDefinition"], drifted
        wait_for(
            "green back on the deployed revision",
            60,
            lambda: (lambda s: s["taskDefinition"] == before["taskDefinition"] and s["desiredCount"] == before["desiredCount"])(green_service()),
        )
        assert production_weights(elb, rule) == {blue_tg: 0, green_tg: 100}
        print(f"capacity drift: green put on {other.split('/')[-1]} x0 behind the worker's back, "
              f"{before['taskDefinition'].split('/')[-1]} x{before['desiredCount']} again; production 0/100 throughout")

        # 3c. A stack update with a tag on every resource, played as CloudFormation applies
        #     it (moto's update of a live service does not): each protected resource's
        #     whole template state is written again, the production rule back to 100/0
        #     blue and both colour services back to the template's task definition, while
        #     green is live. (The production guard refuses such an update at synth, and the
        #     stack policy on the account; this is the floor when neither was used.) The
        #     worker finds both drifts and restores production within seconds.
        count = lambda kind: (outbound(kind), sum(1 for e in seen if e["detail-type"] == kind))[1]
        drifts = count("Weight Drift Detected"), count("Capacity Drift Detected")
        played = replay_protected_update(cfn, ecs, elb, synthesized)
        replayed = time.monotonic()
        assert sorted(played) == ["colour-service", "colour-service", "production-rule"], played
        assert green_service()["taskDefinition"] != before["taskDefinition"], "the replay moved green"
        wait_for(
            "production and green's revision restored",
            60,
            lambda: production_weights(elb, rule) == {blue_tg: 0, green_tg: 100}
            and (lambda s: s["taskDefinition"] == before["taskDefinition"] and s["desiredCount"] == before["desiredCount"])(green_service()),
        )
        restored = time.monotonic() - replayed
        wait_for("both drifts announced", 30, lambda: count("Weight Drift Detected") > drifts[0] and count("Capacity Drift Detected") > drifts[1])
        print(f"stack update replayed (tag on every resource): production and green's revision restored in {restored:.1f}s")

        # 3d. Recorded changes: the stack's rule on the default bus passes CloudTrail's
        #     record of someone else's ModifyRule of the production rule, and not the
        #     worker's own (each of its writes would come back as a reconcile). What the
        #     rule passes is seen from a second target on it.
        recorded_rule = physical(cfn, "ControllerRecordedChanges", "AWS::Events::Rule").split("|")[-1]
        seen_by_rule = sqs.create_queue(QueueName=f"recorded-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        seen_arn = sqs.get_queue_attributes(QueueUrl=seen_by_rule, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_targets(Rule=recorded_rule, EventBusName="default", Targets=[{"Id": "seen", "Arn": seen_arn}])
        worker_role_arn = iam.get_role(RoleName=physical(cfn, "ControllerWorkerRole", "AWS::IAM::Role"))["Role"]["Arn"]

        def recorded(issuer):
            identity = {"type": "AssumedRole", "sessionContext": {"sessionIssuer": {"type": "Role", "arn": issuer}}}
            return {
                "Source": "aws.elasticloadbalancing", "DetailType": "AWS API Call via CloudTrail", "EventBusName": "default",
                "Detail": json.dumps({"eventSource": "elasticloadbalancing.amazonaws.com", "eventName": "ModifyRule",
                                      "userIdentity": identity, "requestParameters": {"ruleArn": rule}}),
            }
        someone = f"arn:aws:iam::{ACCOUNT}:role/cdk-hnb659fds-cfn-exec-role"
        events.put_events(Entries=[recorded(worker_role_arn), recorded(someone)])
        passed = wait_for("the rule to pass a recorded change", 30, lambda: sqs.receive_message(QueueUrl=seen_by_rule, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"))
        issuers = [json.loads(m["Body"])["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] for m in passed]
        issuers += [json.loads(m["Body"])["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"]
                    for m in sqs.receive_message(QueueUrl=seen_by_rule, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])]
        assert issuers == [someone], issuers
        events.remove_targets(Rule=recorded_rule, EventBusName="default", Ids=["seen"])
        print(f"recorded changes: the rule passes {someone.split('/')[-1]}'s ModifyRule, not the worker's own")

        # 4. A production rule that no longer forwards to the pair (a fixed response): the
        #    next push is refused at its start and ends Failed; nothing is touched.
        elb.modify_rule(RuleArn=rule, Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503", "ContentType": "text/plain"}}])
        cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="OK", StateReason="Threshold not crossed: the test")
        push("release-3")
        failed = wait_for("Deployment Failed", 60, lambda: outbound("Deployment Failed"))["detail"]
        set_weights(elb, rule, {blue_tg: 0, green_tg: 100})
        print(f"deployment {failed['deploymentId']}: failed at its start ({failed['reason'][:80]}…)")
        paged = wait_for("Deployment Failed on the pager topic", 30, lambda: notified("Deployment Failed"))
        assert paged[0]["detail"]["deploymentId"] == failed["deploymentId"], paged
        assert notified("Deployment Succeeded") and notified("Deployment Rolled Back"), [e["detail-type"] for e in notified.seen]
        print(f"pager topic: {len(notified.seen)} worker events, the failure among them")
        # A message that is no event at all: rejected, announced, dead-lettered.
        sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody="not an event")
        rejected = wait_for("Event Rejected", 60, lambda: outbound("Event Rejected"))["detail"]
        print(f"a malformed message: rejected ({rejected['reason'][:60]}…)")

        # 4c. The container's health check, as the task definition states it, against the
        #     worker configured from the stack: healthy while it works.
        check = container["healthCheck"]
        assert check["command"][:2] == ["CMD", "/usr/local/bin/bluegreen"], check
        health = subprocess.run([binary, *check["command"][2:]], capture_output=True, text=True, timeout=check["timeout"] + 5)
        assert health.returncode == 0, f"the health check failed: {health.stdout}{health.stderr}"
        assert json.loads(health.stdout)["status"] == "ok", health.stdout
        print(f"health check: {health.stdout.strip()}")

        # 5. SIGTERM: the worker stops cleanly well within the task's stop timeout.
        stop_timeout = container.get("stopTimeout", 30)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=stop_timeout)
        took = time.monotonic() - started
        assert code == 0, f"worker exited {code} on SIGTERM"
        assert took < stop_timeout, took
        print(f"worker stopped on SIGTERM in {took:.1f}s (stop timeout {stop_timeout}s), exit 0")
        # Its working directory, HOME and TMPDIR: it wrote nothing there but its output.
        assert sorted(os.listdir(work)) == ["config.json", "stdout", "worker.log"], os.listdir(work)

        # Its ERROR lines (what the stack's `$.level = "ERROR"` metric filter counts): the
        # failed deployment is one of them.
        with open(log_path) as f:
            errors = [json.loads(line) for line in f if line.startswith("{") and json.loads(line).get("level") == "ERROR"]
        assert any(
            e["fields"].get("message") == "deployment failed" and e["fields"].get("deployment") == failed["deploymentId"]
            for e in errors
        ), f"no ERROR line for {failed['deploymentId']}: {errors}"
        print(f"worker log: {len(errors)} ERROR line(s), the failed deployment among them")

        # 6. Its metrics: every EMF line meets the specification; the deployments, the
        #    rollback, the drift, the failure and the messages above are in them; and every
        #    alarm and dashboard widget reads a metric in a shape the worker emits.
        with open(metrics_path) as f:
            lines = f.read().splitlines()
        namespace = worker_env["BLUEGREEN_METRICS_NAMESPACE"]
        names, shapes = check_emf(lines, namespace)
        for name in ["DeploymentsStarted", "DeploymentsSucceeded", "DeploymentsRolledBack", "DeploymentsFailed", "GreenWeight",
                     "Weight", "Phase", "RollbackLatency", "StepLag", "WeightDrift", "CapacityDrift", "MessagesProcessed", "OutboxPending",
                     "ReconcilePass"]:
            assert name in names, f"{name} missing from the EMF output: {sorted(names)}"
        print(f"EMF: {len(lines) - 1} documents, metrics {sorted(names)}")
        uses, filtered = metric_uses(synthesized, namespace)
        check_metric_uses(uses, filtered, shapes)
        print(f"alarms and dashboard: {len(uses)} reads of {len({(n, d) for n, d, _ in uses})} metrics, each emitted in its shape")
    except BaseException:
        with open(log_path) as f:
            sys.stderr.write("---- worker log (last 60 lines) ----\n" + "".join(f.readlines()[-60:]))
        sys.stderr.write("---- outbound events ----\n" + "\n".join(f"{e['detail-type']} {json.dumps(e['detail'])[:200]}" for e in seen) + "\n")
        raise
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    # 7. IAM: every call above was allowed by the policies the stack gave the caller.
    recorder(endpoint, "stop-recording")
    check_iam(endpoint, cfn, iam, iam_eval.Requests(REGION, ACCOUNT), synthesized)
    # 8. Every command the runbooks show, against this stack.
    runbooks.run_all(endpoint, binary)
    shutil.rmtree(work, ignore_errors=True)
    print("emulated stack: ok")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
