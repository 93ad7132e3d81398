"""The CI recipes in examples/ci run as written, against real sshd hosts.

A recipe is text no one runs until a CI system does, so it rots quietly: an option
renamed, a path misspelled, a secret never written where meshrun reads it. Here each
recipe is parsed (GitHub Actions and GitLab CI with pyyaml, the Jenkinsfile's steps from
its Groovy text) and its shell steps run in order, as the CI would run them: the recipe's
secrets hold a 2-host test fleet's key and known_hosts, its variables keep their
defaults (the checkout has the layout the README asks for: tasks.toml and
ci/agents.toml), HOME is a temp dir and ``meshrun`` runs this checkout. Only the steps
that need the CI's own machinery are skipped (check-out, installing meshrun from an
index, caches, publishing), and exactly those, named here: a new shell step is run, a
new step of any other kind fails this test until it is named. Then what the CI would
keep is checked: meshrun's exit code, the JUnit file, the signed manifest (``meshrun
verify``), every path the recipe publishes or caches, and the SSH key gone. Once more
with a failing task (the meshrun step exits 1, the JUnit file is still written), and
once cancelled the way GitHub and Jenkins cancel a job (a signal to the step's process:
meshrun must get it, stop the tasks on the hosts and keep its records).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe_procs, marker_seconds, wait_gone, wait_running

import meshrun
from meshrun.config import hostsfile
from meshrun.config.inventory import load_inventory
from meshrun.testing.fleet import LOOPBACK, SSHD, Fleet

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "ci"

#: The graph of examples/ci/tasks.toml: one testcase each in the JUnit file.
TASKS = {"lint", "build", "test-1", "test-2", "package"}
#: What the failing run points the recipe's task-file variable at.
FAILING_TASKS = """\
[[task]]
name = "passes"
run = "echo fine"

[[task]]
name = "breaks"
run = "echo 'this task is broken' >&2; exit 3"
"""


def slow_tasks(marker: str) -> str:
    """What the cancelled run points the recipe's task-file variable at: two tasks
    sleeping ``marker`` seconds (one marker per test: a run a failed test left behind
    must not count as the next test's)."""
    return "".join(f'[[task]]\nname = "slow-{i}"\nrun = "sleep {marker}"\n\n' for i in (1, 2))


#: The files and directories every recipe keeps as artifacts (beside junit.xml).
PUBLISHED = {"meshrun.json", "junit.xml", "meshrun-artifacts"}


# -- the world the recipes run in --------------------------------------------------------


@dataclass
class Secrets:
    """What a user stores in the CI: the texts of the SSH key, known_hosts, signing key."""

    ssh_key: str
    known_hosts: str
    signing_key: str
    signing_pub: Path


@dataclass
class Outcome:
    """What one emulated CI job did."""

    checkout: Path
    ssh_dir: Path  # where the recipe put the key (must be gone at the end)
    meshrun_rc: int | None = None  # the exit code of the step that runs meshrun
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # paths the CI would keep
    cached: list[str] = field(default_factory=list)  # paths the CI would save
    venv: Path | None = None  # where the stand-in meshrun was


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not Path(SSHD).exists():
        pytest.skip(f"{SSHD} not found (openssh-server is not installed)")
    with Fleet.start(2, tmp_path_factory.mktemp("recipes-fleet")) as started:
        yield started


@pytest.fixture(scope="module")
def secrets(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    keys = tmp_path_factory.mktemp("signing")
    meshrun.generate_keypair(keys / "signing", comment="ci")
    return Secrets(
        ssh_key=fleet.client_key.read_text(),
        known_hosts=fleet.known_hosts.read_text(),
        signing_key=(keys / "signing").read_text(),
        signing_pub=keys / "signing.pub",
    )


def make_checkout(root: Path, fleet: Fleet, slow: str) -> Path:
    """A repository laid out as examples/ci/README.md says: tasks.toml at the top,
    ci/agents.toml listing the build hosts with no key or known_hosts of its own."""
    checkout = root / "checkout"
    shutil.copytree(RECIPES, checkout)
    (checkout / "failing.toml").write_text(FAILING_TASKS)
    (checkout / "slow.toml").write_text(slow_tasks(slow))
    (checkout / "ci").mkdir()
    hostsfile.write_hosts(
        checkout / "ci" / "agents.toml",
        [
            {"name": h.name, "address": LOOPBACK, "port": h.port, "workdir": h.workdir}
            for h in fleet.hosts
        ],
        defaults={"user": fleet.user},
    )
    return checkout


def fake_venv(venv: Path) -> Path:
    """Stands in for the skipped install step: VENV/bin/meshrun runs this checkout, after
    noting the modes of the SSH material it is given (``ssh_modes``)."""
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "meshrun"
    log = shlex.quote(str(venv.parent / "ssh-modes.log"))
    script.write_text(
        "#!/bin/sh\n"
        'if [ -n "$MESHRUN_SSH_CONFIG" ]; then\n'
        '  dir=$(dirname "$MESHRUN_SSH_CONFIG")\n'
        f'  stat -c "%a %n" "$dir" "$dir"/* >> {log}\n'
        "fi\n"
        f"PYTHONPATH={shlex.quote(str(REPO))} "
        f'exec {shlex.quote(sys.executable)} -m meshrun "$@"\n',
    )
    script.chmod(0o755)
    return bin_dir


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing of this session's SSH agent, config or meshrun."""
    home.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return {
        # No meshrun but the recipe's own (a broken PATH line must not find another).
        "PATH": os.pathsep.join(d for d in path if not (Path(d) / "meshrun").exists()),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CI": "true",
    }


#: What a test does to a running step (its process is the step's entry process).
Cancel = Callable[["subprocess.Popen[str]"], None]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_shell(
    argv: list[str], script: str, env: Mapping[str, str], cwd: Path, cancel: Cancel | None = None
) -> int:
    """Run one step's script from a file, as the CIs do (``bash -c`` could exec the last
    command itself and hide a missing ``exec``); ``cancel`` is called with it running."""
    fd, name = tempfile.mkstemp(suffix=".sh", dir=cwd.parent)  # never in the checkout
    with os.fdopen(fd, "w") as file:
        file.write(script)
    with subprocess.Popen(
        [*argv, name],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A CI starts a step with SIGINT at its default; pytest started from a background
        # job has it ignored, the step would inherit that and meshrun (rightly) keep
        # ignoring GitHub's SIGINT: the cancel test would wait out the tasks and see exit 0.
        preexec_fn=_sigint_default,
    ) as proc:
        try:
            if cancel is not None:
                cancel(proc)
            out, err = proc.communicate(timeout=120)
        except BaseException:
            proc.kill()
            raise
    if proc.returncode != 0 or os.environ.get("MESHRUN_RECIPE_TRACE"):
        sys.stderr.write(f"--- {script[:60]!r} exit {proc.returncode}\n")
        sys.stderr.write(out[-4000:] + err[-4000:])
    return proc.returncode


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` as GitLab expands its variables (unset: empty)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


# -- GitHub Actions ------------------------------------------------------------------------

#: Steps only GitHub itself can run; each ``uses:`` step's inputs are checked instead.
GITHUB_SKIPPED = [
    "Check out",
    "Install meshrun",
    "Restore .meshrun (learned durations, the last runs)",
    "Publish the JUnit report",
    "Keep the signed manifest, the outputs and the JSON report",
    "Save .meshrun",
]
GITHUB_RAN = [
    "Load the SSH key and the pinned known_hosts",
    "Dispatch the tasks",
    "Remove the SSH key",
]


def github_expression(text: str, ctx: Mapping[str, Mapping[str, str]]) -> str:
    """Evaluate ``${{ ... }}``: ``a || b`` over contexts and quoted literals, no more."""

    def one(m: re.Match[str]) -> str:
        for operand in m.group(1).split("||"):
            operand = operand.strip()
            if operand.startswith("'") and operand.endswith("'"):
                value = operand[1:-1]
            else:
                context, _, name = operand.partition(".")
                assert context in ctx, f"expression context {context!r} not emulated: {text}"
                value = ctx[context].get(name, "")
            if value:
                return value
        return ""

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def github_should_run(condition: str, failed: bool) -> bool:
    known = {"success()": not failed, "always()": True, "failure()": failed}
    assert condition in known, f"if: {condition!r} is not emulated"
    return known[condition]


def run_github(world: World) -> Outcome:
    doc = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    assert doc["defaults"]["run"]["shell"] == "bash"
    (job,) = doc["jobs"].values()
    runner_temp = world.root / "runner-temp"
    runner_temp.mkdir()
    files = world.root / "runner-files"
    files.mkdir()
    github_env, github_path = files / "env", files / "path"
    outcome = Outcome(checkout=world.checkout, ssh_dir=runner_temp / "meshrun-ssh")
    venv_bin = fake_venv(runner_temp / "meshrun-venv")
    outcome.venv = venv_bin.parent
    ctx: dict[str, dict[str, str]] = {
        "secrets": {
            "MESHRUN_SSH_KEY": world.secrets.ssh_key,
            "MESHRUN_KNOWN_HOSTS": world.secrets.known_hosts,
            "MESHRUN_SIGNING_KEY": world.secrets.signing_key,
        },
        "vars": dict(world.variables),
        "github": {"ref_name": "main", "run_id": "1", "run_attempt": "1"},
        "runner": {"temp": str(runner_temp)},
        "env": {},
    }
    job_env = {k: github_expression(str(v), ctx) for k, v in job["env"].items()}
    ctx["env"] = job_env
    exported: dict[str, str] = {}
    path_prefix = [str(venv_bin)]  # what the skipped install step adds to GITHUB_PATH
    failed = False
    for step in job["steps"]:
        name = step["name"]
        if not github_should_run(step.get("if", "success()"), failed):
            continue
        if "uses" in step or name == "Install meshrun":
            outcome.skipped.append(name)
            if "uses" in step:
                check_github_action(step["uses"], step.get("with", {}), ctx, outcome)
            continue
        outcome.ran.append(name)
        env = {
            **world.env,
            "RUNNER_TEMP": str(runner_temp),
            "GITHUB_WORKSPACE": str(world.checkout),
            "GITHUB_ENV": str(github_env),
            "GITHUB_PATH": str(github_path),
            **job_env,
            **exported,
            **{k: github_expression(str(v), ctx) for k, v in step.get("env", {}).items()},
        }
        env["PATH"] = os.pathsep.join([*reversed(path_prefix), env["PATH"]])
        script = github_expression(step["run"], ctx)
        dispatch = "meshrun dispatch" in script
        rc = run_shell(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail"],
            script,
            env,
            world.checkout,
            world.cancel if dispatch else None,
        )
        if dispatch:
            assert outcome.meshrun_rc is None, "two steps run meshrun dispatch"
            outcome.meshrun_rc = rc
        failed = failed or rc != 0
        for line in _drain(github_env):
            key, _, value = line.partition("=")
            exported[key] = value
        path_prefix += _drain(github_path)
    return outcome


def _drain(path: Path) -> list[str]:
    """The lines a step appended to a GITHUB_ENV/GITHUB_PATH file (then emptied)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line]
    path.unlink()
    return lines


def check_github_action(
    uses: str, inputs: Mapping[str, Any], ctx: Mapping[str, Mapping[str, str]], outcome: Outcome
) -> None:
    """What each action the test cannot run is given (checked once the job is over)."""
    action, _, version = uses.partition("@")
    assert version, f"{uses}: pin the action's version"
    values = {k: github_expression(str(v), ctx) for k, v in inputs.items()}
    if action == "actions/checkout":
        return
    if action in ("actions/cache/restore", "actions/cache/save"):
        assert values["path"] == ctx["env"]["MESHRUN_STATE_DIR"], values
        if action.endswith("save"):
            outcome.cached.append(values["path"])
        return
    if action == "mikepenz/action-junit-report":
        outcome.published.append(values["report_paths"])
        return
    if action == "actions/upload-artifact":
        outcome.published += values["path"].split()
        return
    raise AssertionError(f"action {uses} is not known to this test: run it or check it here")


# -- GitLab CI -------------------------------------------------------------------------------

#: Lines only the CI image can run (apt-get, a venv from an index).
GITLAB_SKIPPED = [
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-client rsync",
    'python3 -m venv "$MESHRUN_VENV"',
    '"$MESHRUN_VENV/bin/pip" install --quiet "$MESHRUN_PIP_SPEC"',
]


def run_gitlab(world: World) -> Outcome:
    doc = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    (job,) = jobs.values()
    predefined = {
        **world.env,
        "GITLAB_CI": "true",
        "CI_PROJECT_DIR": str(world.checkout),
        "CI_JOB_ID": "1",
        "CI_COMMIT_REF_SLUG": "main",
        "CI_DEFAULT_BRANCH": "main",
    }
    env = dict(predefined)
    for key, value in {**doc.get("variables", {}), **job.get("variables", {})}.items():
        env[key] = expand_vars(str(value), env)
    env.update(world.variables)  # project variables win over the file's
    # File variables: the runner writes each to a file beside the checkout.
    tmp_dir = Path(f"{world.checkout}.tmp")
    tmp_dir.mkdir()
    for key, text in {
        "MESHRUN_SSH_KEY": world.secrets.ssh_key,
        "MESHRUN_KNOWN_HOSTS": world.secrets.known_hosts,
        "MESHRUN_SIGNING_KEY": world.secrets.signing_key,
    }.items():
        (tmp_dir / key).write_text(text)
        env[key] = str(tmp_dir / key)
    outcome = Outcome(checkout=world.checkout, ssh_dir=Path(env["MESHRUN_SSH_DIR"]))
    outcome.venv = fake_venv(Path(env["MESHRUN_VENV"])).parent
    lines = []
    for line in [*job["before_script"], *job["script"]]:
        if line in GITLAB_SKIPPED:
            outcome.skipped.append(line)
        else:
            outcome.ran.append(line)
            lines.append(line)
    assert "meshrun dispatch" in job["script"][-1], "the job's exit code is meshrun's"
    shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
    outcome.meshrun_rc = run_shell(shell, "\n".join(lines), env, world.checkout)
    run_shell(shell, "\n".join(job["after_script"]), env, world.checkout)
    outcome.ran += job["after_script"]
    assert job["cache"]["when"] == "always", "learned durations are saved after failures too"
    outcome.cached += job["cache"]["paths"]
    assert job["artifacts"]["when"] == "always"
    outcome.published += job["artifacts"]["paths"]
    outcome.published.append(job["artifacts"]["reports"]["junit"])
    return outcome


# -- Jenkins ---------------------------------------------------------------------------------

#: Steps only Jenkins can run, as (where, step); junit/archiveArtifacts are checked instead.
JENKINS_SKIPPED = [
    ("Check out", "checkout scm"),
    ("Install meshrun", "sh"),
    ("post always", "junit"),
    ("post always", "archiveArtifacts"),
]
JENKINS_RAN = [("Dispatch", "sh"), ("Dispatch", "sh"), ("post always", "sh")]
_GROOVY_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "$": "$"}


def groovy_skeleton(text: str) -> tuple[str, list[str]]:
    """The Groovy text with comments dropped and each string literal replaced by
    ``S<n>``; and the strings' values (single-quoted ones only: a GString would need
    Groovy to evaluate it, except the ``${env.NAME}`` forms ``jenkins_env`` knows)."""
    out: list[str] = []
    strings: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("//", i):
            i = text.index("\n", i)
            continue
        quote = next((q for q in ("'''", '"""', "'", '"') if text.startswith(q, i)), None)
        if quote is None:
            out.append(text[i])
            i += 1
            continue
        i += len(quote)
        value: list[str] = []
        while not text.startswith(quote, i):
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1]
                if nxt == "\n":  # a line continuation inside the string
                    i += 2
                    continue
                assert nxt in _GROOVY_ESCAPES, f"Groovy escape \\{nxt} not emulated"
                value.append(_GROOVY_ESCAPES[nxt])
                i += 2
                continue
            assert len(quote) == 3 or ch != "\n", "unterminated string"
            value.append(ch)
            i += 1
        i += len(quote)
        out.append(f"S{len(strings)}")
        strings.append("".join(value))
        if quote.startswith('"'):
            strings[-1] = "\x00" + strings[-1]  # marks a GString
    return "".join(out), strings


@dataclass
class JenkinsStep:
    where: str  # the stage's name, or "post always"
    kind: str  # sh, checkout scm, junit, archiveArtifacts
    args: str  # the skeleton of its arguments
    bindings: dict[str, str]  # withCredentials: variable -> credentials id


def jenkins_steps(skeleton: str, strings: list[str]) -> list[JenkinsStep]:
    """Every step in ``steps {}`` and ``post { always {} }``, in order; any other
    statement there fails (a new kind of step must be run or named here)."""
    # withCredentials(...): its bindings, then the argument list out of the way.
    credentials: list[dict[str, str]] = []

    def bindings(m: re.Match[str]) -> str:
        found = re.findall(
            r"(\w+)\(credentialsId: S(\d+), (?:keyFileVariable|variable): S(\d+)\)", m.group(1)
        )
        credentials.append({strings[int(var)]: strings[int(cid)] for _, cid, var in found})
        return "withCredentials()"

    skeleton = re.sub(r"withCredentials\((\[.*?\])\)", bindings, skeleton, flags=re.S)
    stack: list[tuple[str, Any]] = []  # (context, its stage name or bindings)
    steps: list[JenkinsStep] = []
    creds = iter(credentials)
    for raw in skeleton.splitlines():
        line = raw.strip()
        if not line:
            continue
        contexts = [c for c, _ in stack]
        in_steps = bool(contexts) and contexts[-1] in ("steps", "always", "creds")
        if m := re.fullmatch(r"stage\(S(\d+)\) \{", line):
            stack.append(("stage", strings[int(m.group(1))]))
        elif line in ("steps {", "post {", "always {"):
            stack.append((line[:-2], None))
        elif line == "withCredentials() {":
            assert in_steps
            stack.append(("creds", next(creds)))
        elif line == "}":
            stack.pop()
        elif in_steps:
            m = re.fullmatch(r"(sh|checkout|junit|archiveArtifacts) (.*)", line)
            assert m, f"Jenkinsfile step {line!r} is not known to this test"
            where = "post always" if "always" in contexts else dict(stack)["stage"]
            bound = {k: v for c, b in stack if c == "creds" for k, v in b.items()}
            kind = "checkout scm" if line == "checkout scm" else m.group(1)
            steps.append(JenkinsStep(where, kind, m.group(2), bound))
        else:  # pipeline, agent, options, parameters, environment: only their braces
            for ch in line:
                if ch == "{":
                    stack.append(("other", None))
                elif ch == "}":
                    stack.pop()
    assert not stack, "unbalanced braces in the Jenkinsfile"
    return steps


def jenkins_env(skeleton: str, strings: list[str], builtins: Mapping[str, str]) -> dict[str, str]:
    """Build parameters' defaults, then the ``environment {}`` block."""
    env: dict[str, str] = {}
    for name, default in re.findall(r"string\(name: S(\d+), defaultValue: S(\d+)", skeleton):
        env[strings[int(name)]] = strings[int(default)]
    (block,) = re.findall(r"environment \{(.*?)\}", skeleton, flags=re.S)
    for name, index in re.findall(r"(\w+) = S(\d+)", block):
        value = strings[int(index)]
        if value.startswith("\x00"):  # a GString: only ${env.NAME}
            value = value[1:]
            assert "$" not in re.sub(r"\$\{env\.\w+\}", "", value), value
            value = re.sub(r"\$\{env\.(\w+)\}", lambda m: builtins[m.group(1)], value)
        env[name] = value
    return env


def run_jenkins(world: World) -> Outcome:
    skeleton, strings = groovy_skeleton((RECIPES / "Jenkinsfile").read_text())
    workspace_tmp = Path(f"{world.checkout}@tmp")
    secret_files = workspace_tmp / "secretFiles"
    secret_files.mkdir(parents=True)
    builtins = {
        "WORKSPACE": str(world.checkout),
        "WORKSPACE_TMP": str(workspace_tmp),
        "BUILD_NUMBER": "1",
        "JOB_NAME": "meshrun",
    }
    env = {**world.env, **builtins, **jenkins_env(skeleton, strings, builtins)}
    env.update(world.variables)  # build parameters given to this build
    credentials = {
        "meshrun-ssh-key": world.secrets.ssh_key,
        "meshrun-known-hosts": world.secrets.known_hosts,
        "meshrun-signing-key": world.secrets.signing_key,
    }
    outcome = Outcome(checkout=world.checkout, ssh_dir=Path(env["MESHRUN_SSH_DIR"]))
    outcome.venv = fake_venv(Path(env["MESHRUN_VENV"])).parent
    failed = False
    for step in jenkins_steps(skeleton, strings):
        in_post = step.where == "post always"
        if failed and not in_post:
            continue
        if step.kind != "sh" or step.where == "Install meshrun":
            outcome.skipped.append(f"{step.where}: {step.kind}")
            check_jenkins_step(step, strings, outcome)
            continue
        outcome.ran.append(f"{step.where}: {step.kind}")
        literal = re.fullmatch(r"S(\d+)", step.args)
        assert literal, f"sh {step.args}: one string literal"
        script = strings[int(literal.group(1))]
        assert not script.startswith("\x00"), "sh with a GString: use '''...''' (secrets)"
        bound = dict(env)
        for variable, cid in step.bindings.items():
            path = secret_files / cid
            path.write_text(credentials[cid])  # KeyError: an id the README does not name
            bound[variable] = str(path)
        dispatch = "meshrun dispatch" in script
        rc = run_shell(
            ["sh", "-xe"], script, bound, world.checkout, world.cancel if dispatch else None
        )
        if dispatch:
            assert outcome.meshrun_rc is None, "two steps run meshrun dispatch"
            outcome.meshrun_rc = rc
        if not in_post:
            failed = failed or rc != 0
        for path in secret_files.iterdir():  # withCredentials removes its files after
            path.unlink()
    # Jenkins has no cache step: the state directory stays in the agent's workspace.
    outcome.cached.append(env["MESHRUN_STATE_DIR"])
    return outcome


def check_jenkins_step(step: JenkinsStep, strings: list[str], outcome: Outcome) -> None:
    def named(arg: str) -> str:
        m = re.search(rf"\b{arg}: S(\d+)", step.args)
        assert m, f"{step.kind}: no {arg}"
        return strings[int(m.group(1))]

    if step.kind == "junit":
        outcome.published.append(named("testResults"))
    elif step.kind == "archiveArtifacts":
        for pattern in named("artifacts").split(","):
            outcome.published.append(pattern.strip().removesuffix("**"))


# -- the tests ---------------------------------------------------------------------------------


@dataclass
class World:
    root: Path
    checkout: Path
    secrets: Secrets
    env: dict[str, str]
    variables: dict[str, str]  # what the user set in the CI's settings (overrides)
    cancel: Cancel | None = None  # done to the step that runs meshrun, while it runs


Recipe = Callable[[World], Outcome]
RECIPE_RUNNERS: dict[str, Recipe] = {
    "github": run_github,
    "gitlab": run_gitlab,
    "jenkins": run_jenkins,
}
EXPECTED = {
    "github": (GITHUB_RAN, GITHUB_SKIPPED),
    "gitlab": (None, GITLAB_SKIPPED),
    "jenkins": (
        [f"{w}: {k}" for w, k in JENKINS_RAN],
        [f"{w}: {k}" for w, k in JENKINS_SKIPPED],
    ),
}


def emulate(
    recipe: str,
    tmp_path: Path,
    fleet: Fleet,
    secrets: Secrets,
    cancel: Cancel | None = None,
    slow: str | None = None,
    **variables: str,
) -> Outcome:
    checkout = make_checkout(tmp_path, fleet, slow or marker_seconds())
    world = World(tmp_path, checkout, secrets, base_env(tmp_path / "home"), variables, cancel)
    outcome = RECIPE_RUNNERS[recipe](world)
    ran, skipped = EXPECTED[recipe]
    assert outcome.skipped == skipped
    if ran is not None:
        assert outcome.ran == ran
    assert outcome.meshrun_rc is not None, "no step ran meshrun dispatch"
    return outcome


def check_kept(outcome: Outcome) -> None:
    """Every path the CI would publish or cache exists; the key is gone."""
    for path in outcome.published:
        assert (outcome.checkout / path).exists(), f"published {path!r} does not exist"
    assert set(PUBLISHED) <= {p.rstrip("/") for p in outcome.published}
    assert outcome.cached, "the recipe caches nothing"
    for path in outcome.cached:
        assert (outcome.checkout / path / "history.sqlite").is_file(), f"cache {path!r}"
    assert not outcome.ssh_dir.exists(), f"the SSH key was left in {outcome.ssh_dir}"
    assert outcome.venv is not None
    lines = (outcome.venv.parent / "ssh-modes.log").read_text().splitlines()
    modes = {name: mode for mode, name in (line.split(" ", 1) for line in lines)}
    d = str(outcome.ssh_dir)
    assert modes == {
        d: "700",
        **{f"{d}/{name}": "600" for name in ("config", "id", "known_hosts", "signing")},
    }, "MESHRUN_SSH_CONFIG names the recipe's private directory, its files mode 600"


def junit_cases(checkout: Path) -> dict[str, str]:
    """testcase name -> passed, failure or skipped, from the junit.xml the run wrote."""
    root = ET.parse(checkout / "junit.xml").getroot()
    return {
        case.get("name", ""): next(
            (kind for kind in ("failure", "error", "skipped") if case.find(kind) is not None),
            "passed",
        )
        for case in root.iter("testcase")
    }


def verify(path: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshrun", "verify", str(path), "--key", str(pub)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("recipe", sorted(RECIPE_RUNNERS))
def test_recipe_runs_its_meshrun_steps(
    recipe: str, tmp_path: Path, fleet: Fleet, secrets: Secrets
) -> None:
    outcome = emulate(recipe, tmp_path, fleet, secrets)
    assert outcome.meshrun_rc == 0
    checkout = outcome.checkout
    assert junit_cases(checkout) == dict.fromkeys(TASKS, "passed")
    document = json.loads((checkout / "meshrun.json").read_text())
    assert document["exit_code"] == 0
    assert {t["host"] for t in document["tasks"]} <= set(fleet.names)
    for signed in (checkout / "meshrun-artifacts", checkout / document["run_dir"]):
        result = verify(signed, secrets.signing_pub)
        assert result.returncode == 0, result.stdout + result.stderr
    check_kept(outcome)


@pytest.mark.parametrize("recipe", sorted(RECIPE_RUNNERS))
def test_recipe_with_a_failing_task(
    recipe: str, tmp_path: Path, fleet: Fleet, secrets: Secrets
) -> None:
    outcome = emulate(recipe, tmp_path, fleet, secrets, MESHRUN_TASKS="failing.toml")
    assert outcome.meshrun_rc == 1
    assert junit_cases(outcome.checkout) == {"passes": "passed", "breaks": "failure"}
    result = verify(outcome.checkout / "meshrun-artifacts", secrets.signing_pub)
    assert result.returncode == 0, result.stdout + result.stderr
    check_kept(outcome)


#: How each CI stops a job: GitHub signals the step's entry process with SIGINT first,
#: Jenkins' abort sends SIGTERM to the step's processes (GitLab's depends on the
#: executor, so it is left out). The recipes ``exec`` meshrun so the signal is its own.
CANCELS = {"github": (signal.SIGINT, 130), "jenkins": (signal.SIGTERM, 143)}


@pytest.mark.parametrize("recipe", sorted(CANCELS))
def test_recipe_cancelled_stops_the_hosts_and_keeps_the_records(
    recipe: str, tmp_path: Path, fleet: Fleet, secrets: Secrets
) -> None:
    signum, code = CANCELS[recipe]
    slow = marker_seconds()

    def cancel(step: subprocess.Popen[str]) -> None:
        wait_running(f"sleep {slow}", 2)
        os.kill(step.pid, signum)  # the step's own process, as the CI signals it

    outcome = emulate(recipe, tmp_path, fleet, secrets, cancel, slow, MESHRUN_TASKS="slow.toml")
    assert outcome.meshrun_rc == code
    left = wait_gone(f"sleep {slow}")
    assert not left, f"the hosts still run:\n{describe_procs(left)}"
    assert junit_cases(outcome.checkout) == {"slow-1": "skipped", "slow-2": "skipped"}
    document = json.loads((outcome.checkout / "meshrun.json").read_text())
    assert document["interrupted"] is True
    result = verify(outcome.checkout / "meshrun-artifacts", secrets.signing_pub)
    assert result.returncode == 0, result.stdout + result.stderr
    check_kept(outcome)


def test_readme_inventory_is_one_meshrun_reads(tmp_path: Path) -> None:
    """The ci/agents.toml the README shows loads, with no key or known_hosts of its own
    (they would win over the recipe's ssh_config)."""
    readme = (RECIPES / "README.md").read_text()
    (example,) = re.findall(r"```toml\n(# ci/agents\.toml\n.*?)```", readme, flags=re.S)
    (tmp_path / "agents.toml").write_text(example)
    hosts = load_inventory(tmp_path / "agents.toml")
    assert [h.name for h in hosts] == ["build-1", "build-2"]
    assert all(h.identity is None and h.known_hosts is None for h in hosts)
