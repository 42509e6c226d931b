"""The deployment files (SPEC §2, §8) run real `reversals` commands.

docker-compose.yml is validated by `docker compose config` where the compose
plugin is installed (it needs no engine) and its normalized output is checked;
without the plugin the file itself is parsed with PyYAML and checked the same
way. Each check returns a list of problems; the mutation tests below feed it
broken copies, so every check is shown to fail when it should.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock yet

from worker.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"postgres", "redis", "migrate", "api", "worker", "beat", "flower"}
LONG_RUNNING = SERVICES - {"migrate"}
APP_SERVICES = {"migrate", "api", "worker", "beat", "flower"}
PROCESSES = ("api", "worker", "beat", "flower")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
NUMBER = re.compile(r"-\d+(\.\d+)?")
# The `${VAR:?...}` variables of docker-compose.yml, so that `config` can interpolate.
COMPOSE_ENV = {"JWT_SECRET": "compose-config-check", "FLOWER_BASIC_AUTH": "user:password"}


# --- reading the files -------------------------------------------------------


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    return [docker, "compose"] if probe.returncode == 0 else None


def load_compose() -> tuple[dict[str, Any], str]:
    """The compose file as `docker compose config` normalizes it, or as PyYAML reads it."""
    compose = _docker_compose()
    if compose is None:
        return yaml.safe_load(COMPOSE.read_text()), "yaml"
    env = {**os.environ}
    for name, value in COMPOSE_ENV.items():
        env[name] = env.get(name) or value
    base = [*compose, "-f", str(COMPOSE), "config"]
    quiet = subprocess.run(
        [*base, "-q"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert quiet.returncode == 0, f"docker compose config -q rejects the file:\n{quiet.stderr}"
    full = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout), "docker compose config"


@pytest.fixture(scope="module")
def compose_doc() -> dict[str, Any]:
    doc, _ = load_compose()
    assert isinstance(doc, dict)
    return doc


def parse_procfile(text: str) -> dict[str, str]:
    """`name: command` lines, as honcho and foreman read them (other lines are ignored)."""
    found = (re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip()) for line in text.splitlines())
    return {m[1]: m[2] for m in found if m}


# --- normalizing the two compose forms ---------------------------------------


def _argv(value: Any) -> list[str]:
    """A command in exec form (list) or string form (split as compose does)."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(item) for item in value]


def _healthcheck_argv(check: dict[str, Any] | None) -> list[str]:
    if not check or check.get("disable"):
        return []
    test = check.get("test")
    if isinstance(test, str):  # a bare string is CMD-SHELL
        return shlex.split(test)
    argv = _argv(test)
    if not argv or argv[0] == "NONE":
        return []
    if argv[0] == "CMD-SHELL":
        return shlex.split(" ".join(argv[1:]))
    return argv[1:] if argv[0] == "CMD" else argv


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Volume source -> mount target, for volumes (not bind mounts)."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                mounts[volume["source"]] = volume["target"]
        else:
            source, _, rest = str(volume).partition(":")
            if rest and not source.startswith(("/", ".", "~", "$")):
                mounts[source] = rest.split(":")[0]
    return mounts


def _main_argv(service: dict[str, Any]) -> list[str]:
    return [*_argv(service.get("entrypoint")), *_argv(service.get("command"))]


def _service_commands(service: dict[str, Any]) -> list[list[str]]:
    """Every argv the service runs: entrypoint + command, and its healthcheck."""
    runs = (_main_argv(service), _healthcheck_argv(service.get("healthcheck")))
    return [argv for argv in runs if argv]


def _tokens(argv: list[str]) -> list[str]:
    """argv, or the words of its script when it is `sh -c SCRIPT`."""
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        return shlex.split(argv[2])
    return argv


# --- the CLI -----------------------------------------------------------------


def invocations(argv: list[str]) -> list[list[str]]:
    """The arguments of each `reversals` that argv runs (as a command, not an argument)."""
    tokens = _tokens(argv)
    found: list[list[str]] = []
    for i, token in enumerate(tokens):
        at_command = i == 0 or tokens[i - 1] in SHELL_OPERATORS | {"exec"}
        if at_command and Path(token).name == "reversals":
            args: list[str] = []
            for arg in tokens[i + 1 :]:
                if arg in SHELL_OPERATORS:
                    break
                args.append(arg)
            found.append(args)
    return found


def resolve(args: list[str]) -> tuple[list[str], list[str]]:
    """The subcommand path `reversals ARGS` takes in worker.cli, and what is wrong with it."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        shown = " ".join(["reversals", *path])
        if not rest or rest[0].startswith("-"):
            return path, [f"`{shown}` needs a subcommand"]
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            known = ", ".join(sorted(command.commands))
            return path, [f"`{shown}` has no subcommand {name!r} (it has: {known})"]
        command, path = sub, [*path, name]
    options = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    problems = [
        f"`reversals {' '.join(path)}` has no option {token.split('=', 1)[0]}"
        for token in rest
        if token.startswith("-")
        and not NUMBER.fullmatch(token)
        and token.split("=", 1)[0] not in options
    ]
    return path, problems


# --- docker-compose.yml ----------------------------------------------------------


def _healthcheck_problems(services: dict[str, Any]) -> list[str]:
    return [
        f"{name}: no healthcheck"
        for name in sorted(LONG_RUNNING & services.keys())
        if not _healthcheck_argv(services[name].get("healthcheck"))
    ]


APP_NEEDS = {
    "postgres": "service_healthy",
    "redis": "service_healthy",
    "migrate": "service_completed_successfully",
}
DEPENDENCIES = {
    "migrate": {"postgres": "service_healthy"},
    "api": APP_NEEDS,
    "worker": APP_NEEDS,
    "beat": {"redis": "service_healthy", "migrate": "service_completed_successfully"},
    "flower": {"redis": "service_healthy"},
}


def _dependency_problems(services: dict[str, Any]) -> list[str]:
    problems = []
    for name, needs in DEPENDENCIES.items():
        deps = _depends_on(services.get(name) or {})
        for dep, condition in needs.items():
            if deps.get(dep) != condition:
                problems.append(f"{name}: depends_on {dep} is {deps.get(dep)}, not {condition}")
    return problems


def _command_problems(services: dict[str, Any]) -> list[str]:
    problems = []
    runs: dict[str, list[list[str]]] = {}
    for name, service in sorted(services.items()):
        for argv in _service_commands(service or {}):
            for args in invocations(argv):
                path, wrong = resolve(args)
                problems += [f"{name}: {w}" for w in wrong]
                runs.setdefault(name, []).append(path)
    for name in ("migrate", "api", "worker", "beat"):
        if name in services and [name] not in runs.get(name, []):
            problems.append(f"{name}: does not run `reversals {name}`")
    flower = _tokens(_main_argv(services.get("flower") or {}))
    if "flower" not in flower or "--address=0.0.0.0" not in flower:
        problems.append("flower: does not run Flower on 0.0.0.0 (reachable from outside)")
    if not any(token.startswith("--basic-auth=") for token in flower):
        problems.append("flower: does not run Flower behind --basic-auth")
    return problems


def _runtime_problems(doc: dict[str, Any]) -> list[str]:
    services = doc.get("services") or {}
    problems = []
    for name in sorted(APP_SERVICES & services.keys()):
        env = _environment(services[name])
        for key in ("DATABASE_URL", "BROKER_URL", "JWT_SECRET", "FLOWER_BASIC_AUTH"):
            if not env.get(key):
                problems.append(f"{name}: no {key}")
        if env.get("ENVIRONMENT") != "production":
            problems.append(f"{name}: ENVIRONMENT is {env.get('ENVIRONMENT')!r}")
        if urlsplit(env.get("DATABASE_URL", "")).hostname != "postgres":
            problems.append(f"{name}: DATABASE_URL does not point at the postgres service")
        if urlsplit(env.get("BROKER_URL", "")).hostname != "redis":
            problems.append(f"{name}: BROKER_URL does not point at the redis service")
    worker = services.get("worker") or {}
    if "container_name" in worker or worker.get("ports"):
        problems.append("worker: container_name or published ports prevent --scale worker=N")
    if (services.get("migrate") or {}).get("restart") in {"always", "unless-stopped"}:
        problems.append("migrate: a one-shot must not restart")
    for name, port in (("api", 8000), ("flower", 5555)):
        if port not in _container_ports(services.get(name) or {}):
            problems.append(f"{name}: port {port} is not published")
    mounts = _named_volumes(services.get("postgres") or {})
    declared = set(doc.get("volumes") or {})
    if not any(
        target == "/var/lib/postgresql/data" and source in declared
        for source, target in mounts.items()
    ):
        problems.append("postgres: its data is not on a named volume")
    return problems


def compose_problems(doc: dict[str, Any]) -> list[str]:
    services = doc.get("services") or {}
    return [
        *(f"missing service {name}" for name in sorted(SERVICES - services.keys())),
        *_healthcheck_problems(services),
        *_dependency_problems(services),
        *_command_problems(services),
        *_runtime_problems(doc),
    ]


# --- Procfile and Dockerfile ------------------------------------------------------


def procfile_problems(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    problems = []
    if not lines or not lines[0].startswith("#") or "reversals migrate" not in lines[0]:
        problems.append("Procfile: the first line must say to run `reversals migrate` first")
    processes = parse_procfile(text)
    problems += [f"Procfile: no {name} process" for name in PROCESSES if name not in processes]
    for name, command in processes.items():
        runs = invocations(shlex.split(command))
        if not runs:
            problems.append(f"Procfile {name}: does not run reversals")
        for args in runs:
            path, wrong = resolve(args)
            problems += [f"Procfile {name}: {w}" for w in wrong]
            if path == ["migrate"]:
                problems.append(f"Procfile {name}: migrate is a release step, not a process")
            elif name in PROCESSES and path != [name]:
                problems.append(f"Procfile {name}: runs `reversals {' '.join(path)}`")
    return problems


IMAGE_CMD = ["reversals", "api", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 - in a container


def dockerfile_problems(text: str) -> list[str]:
    # Join continued lines, drop comments.
    lines = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(line.split(None, 1)[0].upper(), line.partition(" ")[2]) for line in lines]
    problems = []
    if instructions[:1] != [("FROM", "python:3.11-slim")]:
        problems.append("Dockerfile: must start FROM python:3.11-slim")
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    copied = " ".join(arg for op, arg in instructions if op == "COPY")
    if "requirements.lock" not in copied or "requirements.lock" not in runs:
        problems.append("Dockerfile: does not install from requirements.lock")
    if not re.search(r"pip install --no-deps \.(\s|$)", runs):
        problems.append("Dockerfile: does not `pip install --no-deps .`")
    users = [arg.split(":")[0] for op, arg in instructions if op == "USER"]
    if not users or users[-1] in {"root", "0"}:
        problems.append("Dockerfile: does not run as a non-root user")
    cmds = [arg for op, arg in instructions if op == "CMD"]
    cmd = json.loads(cmds[-1]) if cmds else []
    if cmd != IMAGE_CMD:
        problems.append(f"Dockerfile: CMD is {cmd}")
    for args in invocations(cmd):
        problems += [f"Dockerfile CMD: {w}" for w in resolve(args)[1]]
    return problems


# --- the tests ---------------------------------------------------------------------


def test_compose_file_is_valid_and_complete(compose_doc: dict[str, Any]) -> None:
    assert compose_problems(compose_doc) == []


def test_procfile_runs_the_cli() -> None:
    assert procfile_problems(PROCFILE.read_text()) == []


def test_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_resolve_follows_the_click_groups() -> None:
    assert resolve(["brand", "create", "acme", "--json"]) == (["brand", "create"], [])
    assert resolve(["worker", "-c", "2", "--queues=reversals"]) == (["worker"], [])
    assert resolve(["brand"])[1] == ["`reversals brand` needs a subcommand"]
    assert "no subcommand 'serve'" in resolve(["serve"])[1][0]
    assert resolve(["api", "--bind", "x"])[1] == ["`reversals api` has no option --bind"]


DELETE = object()

# (dotted path in the compose document, new value or DELETE, expected problem)
COMPOSE_MUTATIONS = [
    ("services.beat", DELETE, "missing service beat"),
    ("services.worker.healthcheck", DELETE, "worker: no healthcheck"),
    ("services.flower.healthcheck", {"disable": True}, "flower: no healthcheck"),
    ("services.redis.healthcheck", {"test": ["NONE"]}, "redis: no healthcheck"),
    (
        "services.api.depends_on.redis",
        {"condition": "service_started"},
        "api: depends_on redis is service_started, not service_healthy",
    ),
    (
        "services.worker.depends_on",
        ["postgres", "redis", "migrate"],
        "worker: depends_on postgres is service_started, not service_healthy",
    ),
    ("services.api.depends_on.migrate", DELETE, "api: depends_on migrate is None"),
    ("services.api.command", ["reversals", "serve"], "api: `reversals` has no subcommand 'serve'"),
    ("services.api.command", ["reversals", "worker"], "api: does not run `reversals api`"),
    (
        "services.worker.command",
        ["reversals", "worker", "--threads", "2"],
        "worker: `reversals worker` has no option --threads",
    ),
    (
        "services.beat.healthcheck.test",
        ["CMD-SHELL", "reversals healthcheck || exit 1"],
        "beat: `reversals` has no subcommand 'healthcheck'",
    ),
    (
        "services.migrate.command",
        ["sh", "-c", "reversals upgrade && echo done"],
        "migrate: `reversals` has no subcommand 'upgrade'",
    ),
    (
        "services.flower.command",
        ["reversals", "flower", "--port", "5555"],
        "flower: does not run Flower on 0.0.0.0",
    ),
    ("services.worker.container_name", "worker", "worker: container_name or published ports"),
    ("services.migrate.restart", "unless-stopped", "migrate: a one-shot must not restart"),
    ("services.api.ports", [], "api: port 8000 is not published"),
    ("services.postgres.volumes", ["./data:/var/lib/postgresql/data"], "postgres: its data"),
]


def _mutate(doc: dict[str, Any], dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize(("dotted", "value", "expected"), COMPOSE_MUTATIONS)
def test_compose_checks_catch(
    compose_doc: dict[str, Any], dotted: str, value: object, expected: str
) -> None:
    broken = copy.deepcopy(compose_doc)
    _mutate(broken, dotted, value)
    problems = compose_problems(broken)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("DATABASE_URL", "worker: no DATABASE_URL"),
        ("BROKER_URL", "worker: no BROKER_URL"),
        ("JWT_SECRET", "worker: no JWT_SECRET"),
        ("FLOWER_BASIC_AUTH", "worker: no FLOWER_BASIC_AUTH"),
        ("ENVIRONMENT", "worker: ENVIRONMENT is None"),
    ],
)
def test_compose_checks_catch_missing_env(
    compose_doc: dict[str, Any], key: str, expected: str
) -> None:
    broken = copy.deepcopy(compose_doc)
    env = _environment(broken["services"]["worker"])
    del env[key]
    broken["services"]["worker"]["environment"] = env
    assert expected in compose_problems(broken)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("DATABASE_URL", "postgresql://reversals@localhost:5432/reversals", "DATABASE_URL does"),
        ("BROKER_URL", "redis://127.0.0.1:6379/0", "BROKER_URL does"),
        ("ENVIRONMENT", "development", "api: ENVIRONMENT is 'development'"),
    ],
)
def test_compose_checks_catch_wrong_env(
    compose_doc: dict[str, Any], key: str, value: str, expected: str
) -> None:
    broken = copy.deepcopy(compose_doc)
    env = _environment(broken["services"]["api"])
    env[key] = value
    broken["services"]["api"]["environment"] = env
    problems = compose_problems(broken)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("# Run `reversals migrate` first", "# Start", "first line must say"),
        ("beat: reversals beat", "sweeper: reversals beat", "Procfile: no beat process"),
        ("beat: reversals beat", "beat: reversals sweep", "no subcommand 'sweep'"),
        (
            "flower: reversals flower",
            "flower: reversals api",
            "Procfile flower: runs `reversals api`",
        ),
        ("worker: reversals worker", "worker: celery -A worker.celery_app worker", "does not run"),
        ("reversals worker --concurrency", "reversals worker --procs", "has no option --procs"),
        (
            "beat: reversals beat",
            "beat: reversals beat\nrelease: reversals migrate",
            "release step",
        ),
    ],
)
def test_procfile_checks_catch(old: str, new: str, expected: str) -> None:
    text = PROCFILE.read_text()
    assert old in text
    problems = procfile_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("FROM python:3.11-slim", "FROM python:3.11", "FROM python:3.11-slim"),
        ("USER 10001:10001", "USER root", "non-root"),
        ("COPY requirements.lock", "COPY requirements.txt", "from requirements.lock"),
        ("pip install --no-deps .", "pip install .", "--no-deps"),
        ('"api", "--host"', '"serve", "--host"', "CMD is"),
    ],
)
def test_dockerfile_checks_catch(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


def test_compose_workers_serve_their_metrics_to_the_network(compose_doc: dict[str, Any]) -> None:
    # The default bind (127.0.0.1) would be unreachable from Prometheus in another container.
    worker = _environment(compose_doc["services"]["worker"])
    assert worker["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container, on purpose
    assert worker["DATABASE_URL"] == _environment(compose_doc["services"]["api"])["DATABASE_URL"]
