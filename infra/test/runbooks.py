"""Runs every command the runbooks show against the example stack on the emulator, so the
runbooks cannot rot: the "Before you start" block of runbooks/README.md first (it reads
the stack's outputs and the injected configuration), then each line of every `sh` block
of every runbook with the variables it set.

`bluegreen` commands may end 0, 3 (an action the current state refuses, with its reason),
5 (a wait shortened here ran out), 6 or 7 (a deployment followed rolled back or failed) —
the state of the emulated stack is whatever the emulated-stack test left — but never 1 (a
configuration or argument it cannot use), 2 (usage: a flag that no longer exists) or 4
(unreachable). Every other command (the AWS CLI, shell) must succeed. Waits are
shortened to a few seconds.
"""

import os
import re
import subprocess
import tempfile
from pathlib import Path

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation", "Verification", "Escalation"]


def blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(text):
    for block in blocks(text, "sh"):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def aws_shim(directory):
    """An `aws` that passes --endpoint-url: AWS CLI v1 sends SQS calls in us-east-1 to
    queue.amazonaws.com unless the endpoint is given on the command line (it ignores
    AWS_ENDPOINT_URL there)."""
    real = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "aws"
    shim = Path(directory) / "aws"
    shim.write_text(f'#!/bin/sh\nexec "{real}" --endpoint-url "$AWS_ENDPOINT_URL" "$@"\n')
    shim.chmod(0o755)
    return str(directory)


def run_all(endpoint, binary):
    shims = tempfile.mkdtemp(prefix="bluegreen-runbooks-")
    env = {
        "PATH": os.pathsep.join([aws_shim(shims), str(Path(binary).resolve().parent), os.environ.get("PATH", "")]),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
    }
    readme = (RUNBOOKS / "README.md").read_text()
    (preamble,) = blocks(readme, "sh")
    # The block prints a status first: a NUL separates it from the environment.
    dump = subprocess.run(["sh", "-ec", preamble + "\nprintf '\\0'\nenv -0"], env=env, capture_output=True, text=True)
    assert dump.returncode == 0, f"runbooks/README.md 'Before you start' failed:\n{dump.stdout}\n{dump.stderr}"
    for pair in dump.stdout.split("\0")[1:]:
        key, sep, value = pair.partition("=")
        if sep and key.isidentifier():
            env[key] = value
    for name in ["PREFIX", "QUEUE_URL", "DLQ_URL", "UNDELIVERED_URL", "TABLE", "BUS", "RULE_ARN", "CLUSTER", "WORKER_SERVICE", "LOG_GROUP", "BLUE_TG", "GREEN_TG", "BLUEGREEN_CONFIG_JSON"]:
        assert env.get(name) and env[name] != "None", f"the preamble left {name} empty: {env.get(name)!r}"

    count = 0
    files = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    for path in files:
        text = path.read_text()
        headings = re.findall(r"^## (\w+)", text, flags=re.M)
        assert headings == SECTIONS, f"{path.name}: sections {headings}, expected {SECTIONS}"
        local = dict(env)  # what this runbook's own `export` lines set
        for command in commands(text):
            command = re.sub(r"--timeout \d+[smh]", "--timeout 3s", command)
            command = re.sub(r"--start-timeout \d+[smh]", "--start-timeout 3s", command)
            command = re.sub(r"^timeout \d+ ", "timeout 3 ", command)
            # Actions and watch wait for the worker to take the request; it may not run here.
            if re.match(r"bluegreen (deploy|promote|approve|pause|resume|abort|rollback|retry|switch|watch) ", command) and "--start-timeout" not in command:
                command += " --start-timeout 3s"
            if command.startswith("export "):
                done = subprocess.run(["sh", "-ec", command + "\nprintf '\\0'\nenv -0"], env=local, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"{path.name}: `{command}` exited {done.returncode}\n{done.stderr[-2000:]}"
                for pair in done.stdout.split("\0")[1:]:
                    key, sep, value = pair.partition("=")
                    if sep and key.isidentifier():
                        local[key] = value
                count += 1
                continue
            done = subprocess.run(["sh", "-c", command], env=local, capture_output=True, text=True, timeout=120)
            if command.startswith("bluegreen "):
                allowed = {0, 3, 5, 6, 7}
            elif command.startswith("timeout "):
                allowed = {0, 124}  # a bounded wait, shortened here: it may give up
            else:
                allowed = {0}
            assert done.returncode in allowed, (
                f"{path.name}: `{command}` exited {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
            count += 1
    print(f"runbooks: {len(files)} files, {count} commands run against the emulated stack")
    return count
