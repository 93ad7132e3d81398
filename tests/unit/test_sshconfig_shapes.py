"""One ``ssh -G`` per shape of ssh_config: what is derived must be what OpenSSH says.

Aliases to which the same ``Host`` sections apply (and nothing uses the alias) share one
``ssh -G``; the others get its output with ``host``/``hostname`` rewritten. The property
test writes random configs (patterns with negation and mixed case, User/Port/
IdentityFile, ``%h``, HostName, Match, Include) and random aliases (mixed case,
addresses in and out of canonical form), and compares every derived setting, and every
derived ``ssh -G`` line, with the real ``ssh -G`` of that alias.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrun.transport.sshconfig import (
    SSHConfigResolver,
    renamed_dump,
    settings_from_dump,
    ssh_hostname,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")


def _real_dump(config: Path, alias: str, user: str | None = None, port: int | None = None) -> str:
    argv = ["ssh", "-F", str(config), "-G"]
    argv += ["-l", user] if user else []
    argv += ["-p", str(port)] if port else []
    proc = subprocess.run(
        [*argv, "--", alias], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_names_ssh_G_prints() -> None:
    assert ssh_hostname("Build-7.Example.COM") == "build-7.example.com"
    assert ssh_hostname("10.0.0.5") == "10.0.0.5"
    assert ssh_hostname("::1") == "::1"
    assert ssh_hostname("fe80::1") == "fe80::1"
    # addresses OpenSSH rewrites, and names we do not lowercase for it: ssh -G decides
    assert ssh_hostname("127.1") is None  # printed as 127.0.0.1
    assert ssh_hostname("FE80::1") is None  # kept as given (differs from canonical only in case)
    assert ssh_hostname("ünï") is None
    assert ssh_hostname("-oProxyCommand=x") is None


# -- the property ----------------------------------------------------------------------

_PATTERNS = [
    "web*",
    "WEB*",
    "web1",
    "!web2",
    "db?",
    "Db1",
    "!DB*",
    "*",
    "10.0.0.*",
    "!*1",
    "*.example.com",
]
_LINES = [
    "User deploy",
    "Port 2201",
    "IdentityFile /k/id",
    "IdentityFile /k/id_%h",
    "IdentitiesOnly yes",
    "UserKnownHostsFile /k/kh",
    "GlobalKnownHostsFile /dev/null",
    "StrictHostKeyChecking yes",
    "BatchMode yes",
    "HostName 10.9.9.9",
    "HostName %h.example.net",
    "HostKeyAlias hk",
    "ProxyJump j",
    "ConnectTimeout 3",
    "ServerAliveInterval 9",
    "ControlPath /tmp/cp-%C",
    "CanonicalizeHostname no",
    "Compression yes",
    "SendEnv LANG",
]
_MATCHES = ["Match user nobody-here", "Match host web*", "Match all"]
_INCLUDED = ["", "Host web*\n  User inc", "Host *\n  Port 2300\n  IdentityFile /k/inc"]
_ALIASES = [
    "web1",
    "web2",
    "WEB1",
    "Web3",
    "db1",
    "DB1",
    "Db1",
    "db22",
    "10.0.0.5",
    "10.0.0.51",
    "127.1",
    "::1",
    "FE80::1",
    "host.example.com",
    "Host.Example.COM",
    "plain",
    "x_y",
]


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, str]:
    blocks = []
    for _ in range(draw(st.integers(0, 4))):
        patterns = draw(st.lists(st.sampled_from(_PATTERNS), min_size=1, max_size=3, unique=True))
        lines = draw(st.lists(st.sampled_from(_LINES), max_size=4, unique=True))
        header = "Host " + " ".join(patterns)
        if draw(st.integers(0, 11)) == 0:
            header = draw(st.sampled_from(_MATCHES))
        blocks.append("\n".join([header, *("  " + line for line in lines)]))
    return "\n".join(blocks) + "\n", draw(st.sampled_from(_INCLUDED))


_queries = st.lists(
    st.tuples(
        st.sampled_from(_ALIASES),
        st.sampled_from([None, None, "ci"]),
        st.sampled_from([None, None, 2222]),
    ),
    min_size=2,
    max_size=8,
    unique=True,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=configs(), queries=_queries, include_first=st.booleans())
def test_derived_settings_are_what_ssh_G_says(
    tmp_path: Path,
    case: tuple[str, str],
    queries: list[tuple[str, str | None, int | None]],
    include_first: bool,
) -> None:
    text, included = case
    (tmp_path / "inc.conf").write_text(included + "\n")
    include = f"Include {tmp_path}/inc.conf\n"
    config = tmp_path / "config"
    config.write_text(include + text if include_first else text + include)
    resolver = SSHConfigResolver(str(config))
    resolver.resolve_all((a, u, p, frozenset()) for a, u, p in queries)
    real = {q: _real_dump(config, *q) for q in queries}
    for query in queries:
        alias, user, port = query
        ours = resolver.resolve(alias, user=user, port=port)
        assert ours == settings_from_dump(alias, real[query]), (text, included, query)
    # the stronger claim: the whole ssh -G output is the same but for the two names
    for a, b in ((a, b) for a in queries for b in queries if a != b):
        shape_a = resolver.scan.shape(a[0])
        if shape_a is None or (shape_a, a[1:]) != (resolver.scan.shape(b[0]), b[1:]):
            continue
        assert renamed_dump(real[a], b[0]) == real[b], (text, included, a, b)


# -- counting --------------------------------------------------------------------------


def _ci_config(tmp_path: Path) -> Path:
    """The ssh_config examples/ci/github-actions.yml writes."""
    config = tmp_path / "config"
    config.write_text(
        "Host *\n"
        f'  IdentityFile "{tmp_path}/id"\n'
        "  IdentitiesOnly yes\n"
        f'  UserKnownHostsFile "{tmp_path}/known_hosts"\n'
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
    )
    return config


def test_hosts_of_one_shape_share_one_ssh_G(tmp_path: Path) -> None:
    config = _ci_config(tmp_path)
    aliases = [f"build{i}.CI.example" for i in range(30)] + [f"10.1.0.{i}" for i in range(1, 11)]
    resolver = SSHConfigResolver(str(config))
    resolver.resolve_all((a, None, None, frozenset()) for a in aliases)
    resolved = {a: resolver.resolve(a) for a in aliases}
    assert resolver.ssh_g_runs == 1
    for alias in aliases[::6]:
        assert resolved[alias] == settings_from_dump(alias, _real_dump(config, alias))
    assert resolved["build3.CI.example"].hostname == "build3.ci.example"
    assert resolved["build3.CI.example"].identity_files == (f"{tmp_path}/id",)


def test_each_set_of_sections_and_each_user_and_port_is_its_own_shape(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host web* !web9\n  User deploy\nHost db?\n  Port 2201\nHost *\n  BatchMode yes\n"
    )
    resolver = SSHConfigResolver(str(config))
    queries = [(f"{kind}{i}", None, None) for kind in ("web", "db", "other") for i in range(1, 10)]
    queries += [("web1", "ci", None), ("web2", "ci", None), ("web3", None, 2222)]
    queries += [("WEB1", None, None)]  # `web*` would apply case-blind: its own ssh -G
    resolver.resolve_all((a, u, p, frozenset()) for a, u, p in queries)
    for alias, user, port in queries:
        ours = resolver.resolve(alias, user=user, port=port)
        assert ours == settings_from_dump(alias, _real_dump(config, alias, user, port))
    # web1-8; db1-9; other1-9 with web9 (`!web9`: only `Host *` applies); -l ci; -p; WEB1
    assert resolver.ssh_g_runs == 6


@pytest.mark.parametrize(
    "config_text",
    [
        "Host *\n  HostName %h.internal\n",
        "Host *\n  HostName 10.9.9.9\n",
        "Host *\n  IdentityFile /k/%r@%h\n",
        "Host *\n  ProxyJump bastion\n",
        "Host *\n  HostKeyAlias fleet\n",
        "Host *\n  ControlPath /tmp/%C\n  User ci\n",
        "Match all\n  User ci\n",
        "Host *\n  CanonicalizeHostname no\n  User ci\n",
        "Host nothing-here\n  ProxyCommand nc %h %p\nMatch host web*\n  User x\nHost *\n  User y\n",
    ],
)
def test_what_uses_the_alias_is_resolved_per_host(tmp_path: Path, config_text: str) -> None:
    config = tmp_path / "config"
    config.write_text(config_text)
    aliases = ["web1", "web2", "web3", "db1"]
    resolver = SSHConfigResolver(str(config))
    resolver.resolve_all((a, None, None, frozenset()) for a in aliases)
    for alias in aliases:
        assert resolver.resolve(alias) == settings_from_dump(alias, _real_dump(config, alias))
    assert resolver.ssh_g_runs == len(aliases)


def test_a_failed_first_resolution_leaves_the_others_their_own(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host *\n  User ci\n")
    resolver = SSHConfigResolver(str(config), ssh_binary=str(tmp_path / "no-ssh-here"))
    with pytest.raises(Exception, match="not installed"):
        resolver.resolve("web1")
    with pytest.raises(Exception, match="not installed"):
        resolver.resolve("web2")
