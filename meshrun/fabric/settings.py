"""A ``fabric.Connection`` as meshrun's :class:`~meshrun.config.inventory.Host`.

People who switch from Fabric already build Connections (``Connection("web1",
user="deploy", connect_kwargs={"key_filename": ...}, gateway=bastion)``), often from a
``fabric.Config``; this module reads what they set and says it in meshrun's terms, so
the same object reaches the same machine as the same user with the same key. What
meshrun cannot honour is refused here, before any host is contacted, naming the
setting and what to do instead (:class:`NotSupported`): meshrun only logs in with
public keys, never prompts, never decrypts a key itself and never accepts an unknown
host key without being told to.

The host is given by its alias (``original_host``), as the user wrote it: meshrun
resolves ssh_config itself (``ssh -G``: HostName, IdentityFile, ProxyJump,
UserKnownHostsFile...), from the same file Fabric read. User and port are passed as
Fabric settled them (its argument, else ssh_config's, else its default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from meshrun.config.inventory import Host
from meshrun.errors import InputError
from meshrun.records import record

__all__ = ["GroupSettings", "NotSupported", "connector_settings", "to_host"]


class NotSupported(InputError, NotImplementedError):
    """A Fabric setting or argument meshrun cannot honour; ``fix`` says what to do.

    Both an :class:`~meshrun.errors.InputError` (exit 2 in meshrun's terms) and a
    ``NotImplementedError``, which is what Fabric code expects of a missing feature.
    """


#: ``connect_kwargs`` that mean the same under meshrun. ``timeout`` is the connect
#: timeout; the others bound parts of a connect that meshrun's own handshake deadline
#: (the connect timeout) already bounds; ``allow_agent``/``look_for_keys`` choose which
#: keys are offered, which meshrun takes from ssh_config (IdentitiesOnly, IdentityAgent).
ACCEPTED_CONNECT_KWARGS = frozenset(
    {
        "key_filename",
        "timeout",
        "banner_timeout",
        "auth_timeout",
        "channel_timeout",
        "allow_agent",
        "look_for_keys",
    }
)

#: What each refused ``connect_kwargs`` key needs instead.
REFUSED_CONNECT_KWARGS = {
    "password": "meshrun logs in with keys only: install a public key on the host "
    "(`ssh-copy-id`) and pass key_filename, or load it into ssh-agent",
    "passphrase": "meshrun never decrypts a key itself: load the key into ssh-agent "
    "(`ssh-add PATH`) and drop passphrase",
    "pkey": "meshrun reads keys from files or ssh-agent, never from memory: pass "
    "key_filename=PATH, or add the key to ssh-agent (`ssh-add PATH`)",
    "sock": "give the jump host as gateway=Connection(...), a ProxyCommand as "
    "gateway='cmd', or ProxyJump/ProxyCommand in ~/.ssh/config",
    "gss_auth": "meshrun logs in with public keys only (no GSSAPI/Kerberos)",
    "gss_kex": "meshrun logs in with public keys only (no GSSAPI/Kerberos)",
    "gss_deleg_creds": "meshrun logs in with public keys only (no GSSAPI/Kerberos)",
    "gss_host": "meshrun logs in with public keys only (no GSSAPI/Kerberos)",
    "gss_trust_dns": "meshrun logs in with public keys only (no GSSAPI/Kerberos)",
    "disabled_algorithms": "meshrun negotiates paramiko's algorithms as they are: "
    "drop disabled_algorithms",
    "transport_factory": "meshrun makes its own transports: drop transport_factory",
    "auth_strategy": "meshrun authenticates with ssh-agent and key files: drop "
    "auth_strategy and pass key_filename",
    "compress": "meshrun does not compress: drop compress",
}


@record
class GroupSettings:
    """What the whole group's connector takes from the Connections (one value each)."""

    #: The ssh_config meshrun reads (``ssh -F``); None: ~/.ssh/config and the system's.
    ssh_config_path: str | None
    #: The longest connect timeout any Connection asked for; None: meshrun's default
    #: (ssh_config's ConnectTimeout, else 10 s).
    connect_timeout_s: float | None


def _refuse(cxn: Any, setting: str, fix: str) -> NotSupported:
    return NotSupported(f"{_where(cxn)}: {setting} cannot be honoured by meshrun", fix=fix)


def _where(cxn: Any) -> str:
    return f"Connection {cxn.user}@{cxn.original_host}:{cxn.port}"


def _paths(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def explicit_keys(cxn: Any) -> list[str]:
    """The key files the Connection was given itself (its ``connect_kwargs`` and its
    Config's), without the ones Fabric copied in from ssh_config's IdentityFile: meshrun
    reads those from ssh_config itself."""
    from_config = {os.path.expanduser(p) for p in _paths(cxn.ssh_config.get("identityfile"))}
    keys: list[str] = []
    for path in _paths(cxn.connect_kwargs.get("key_filename")):
        full = os.path.expanduser(path)
        if full not in from_config and full not in keys:
            keys.append(full)
    return keys


def _identity(cxn: Any) -> str | None:
    keys = explicit_keys(cxn)
    if len(keys) > 1:
        raise _refuse(
            cxn,
            f"connect_kwargs key_filename with {len(keys)} keys ({', '.join(keys)})",
            "pass the one key this host takes, or list them as IdentityFile lines for the "
            "host in ~/.ssh/config (meshrun offers those in order)",
        )
    return keys[0] if keys else None


def _check_connect_kwargs(cxn: Any) -> None:
    for key, value in cxn.connect_kwargs.items():
        if key in ACCEPTED_CONNECT_KWARGS:
            continue
        if key in REFUSED_CONNECT_KWARGS:
            if value is None or value is False:  # the default said out loud
                continue
            raise _refuse(cxn, f"connect_kwargs[{key!r}]", REFUSED_CONNECT_KWARGS[key])
        raise _refuse(
            cxn,
            f"connect_kwargs[{key!r}]",
            "meshrun takes key_filename, timeout, banner_timeout, auth_timeout, "
            "channel_timeout, allow_agent and look_for_keys: drop the others",
        )


def _known_hosts(cxn: Any) -> str | None:
    """The known_hosts file the Connection's client loaded (``load_host_keys(PATH)``);
    None: meshrun's default (ssh_config's UserKnownHostsFile, ~/.ssh/known_hosts)."""
    client = cxn.client
    path = getattr(client, "_host_keys_filename", None)
    if path:
        return str(os.fspath(path))
    if len(getattr(client, "_host_keys", ())):
        raise _refuse(
            cxn,
            "host keys added in memory (client.get_host_keys().add(...))",
            "write them to a known_hosts file and call client.load_host_keys(PATH): "
            "meshrun checks host keys against files",
        )
    return None


def _jump_spec(cxn: Any, gateway: Any, identity: str | None, depth: int = 0) -> str:
    """A gateway Connection (and the gateways behind it) as a ProxyJump list."""
    if depth > 8:
        raise _refuse(cxn, "a gateway chain of more than 8 hops", "check for a loop")
    if gateway.forward_agent:
        raise _refuse(
            cxn, "gateway forward_agent=True", "meshrun never forwards ssh-agent: drop it"
        )
    _check_connect_kwargs(gateway)
    keys = explicit_keys(gateway)
    if keys and keys != ([identity] if identity else []):
        raise _refuse(
            cxn,
            f"a gateway with its own key_filename ({', '.join(keys)})",
            "meshrun's jump hosts log in with the host's own key: give both the same "
            "key_filename, or set IdentityFile for the jump host in ~/.ssh/config and "
            "no key_filename on the host",
        )
    hop = f"{gateway.user}@{_bracket(gateway.original_host)}:{gateway.port}"
    inner = gateway.gateway
    if not inner:
        return hop
    if isinstance(inner, str):
        raise _refuse(
            cxn,
            "a gateway Connection that itself goes through a ProxyCommand",
            "reach the jump host with ProxyJump, or put the whole path in one ProxyCommand",
        )
    return f"{_jump_spec(cxn, inner, identity, depth + 1)},{hop}"


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def to_host(cxn: Any, name: str) -> Host:
    """The Host meshrun dials for the Connection ``cxn``, named ``name`` (unique in its
    group). NotSupported for a setting meshrun cannot honour."""
    if getattr(cxn.config, "_given_explicit_object", False):
        raise _refuse(
            cxn,
            "Config(ssh_config=SSHConfig object)",
            "write the ssh_config to a file and pass Config(runtime_ssh_path=FILE): "
            "meshrun reads ssh_config files with OpenSSH's own rules",
        )
    if cxn.forward_agent:
        raise _refuse(cxn, "forward_agent=True", "meshrun never forwards ssh-agent: drop it")
    # .get: the dict protocol, without invoke's costly nested proxy (see run_options).
    if (cxn.config.get("authentication") or {}).get("strategy_class") is not None:
        raise _refuse(
            cxn,
            "config.authentication.strategy_class",
            "meshrun authenticates with ssh-agent and key files: unset it",
        )
    _check_connect_kwargs(cxn)
    identity = _identity(cxn)
    proxy_jump = proxy_command = None
    gateway = cxn.gateway
    if isinstance(gateway, str):
        proxy_command = gateway
    elif gateway:
        proxy_jump = _jump_spec(cxn, gateway, identity)
    elif gateway is False and ("proxyjump" in cxn.ssh_config or "proxycommand" in cxn.ssh_config):
        proxy_jump = "none"  # gateway=False overrides ssh_config's, as ssh -J none does
    return Host(
        name=name,
        address=cxn.original_host,
        port=int(cxn.port),
        user=cxn.user,
        identity=identity,
        known_hosts=_known_hosts(cxn),
        # sshd's login directory, where Fabric's commands start: no cd.
        workdir=".",
        proxy_jump=proxy_jump,
        proxy_command=proxy_command,
    )


def host_names(connections: Sequence[Any]) -> list[str]:
    """A name per Connection, unique in the group: the alias, or ``user@alias:port``
    where two Connections share an alias."""
    counts: dict[str, int] = {}
    for cxn in connections:
        counts[cxn.original_host] = counts.get(cxn.original_host, 0) + 1
    return [
        cxn.original_host
        if counts[cxn.original_host] == 1
        else f"{cxn.user}@{_bracket(cxn.original_host)}:{cxn.port}"
        for cxn in connections
    ]


def _ssh_config_path(cxn: Any) -> str | None:
    config = cxn.config
    if not config.load_ssh_configs:
        return os.devnull  # as `ssh -F /dev/null`: no ssh_config at all
    runtime = getattr(config, "_runtime_ssh_path", None) or config.ssh_config_path
    if runtime:
        return str(os.fspath(runtime))
    user_path = getattr(config, "_user_ssh_path", "~/.ssh/config")
    system_path = getattr(config, "_system_ssh_path", "/etc/ssh/ssh_config")
    if user_path != "~/.ssh/config" or system_path != "/etc/ssh/ssh_config":
        raise _refuse(
            cxn,
            "Config(user_ssh_path=..., system_ssh_path=...)",
            "pass Config(runtime_ssh_path=FILE) (one file, as `ssh -F FILE`), or set "
            "MESHRUN_SSH_CONFIG=FILE",
        )
    return os.environ.get("MESHRUN_SSH_CONFIG") or None


def _connect_timeout(cxn: Any) -> float | None:
    value = cxn.connect_kwargs.get("timeout")
    if value is None:
        value = cxn.connect_timeout
    return None if value is None else float(value)


def connector_settings(connections: Sequence[Any]) -> GroupSettings:
    """The one ssh_config and connect timeout the group's connector uses.
    NotSupported when the Connections read different ssh_config files."""
    paths = {_ssh_config_path(cxn) for cxn in connections}
    if len(paths) > 1:
        shown = ", ".join(sorted(str(p or "~/.ssh/config") for p in paths))
        raise NotSupported(
            f"the group's Connections read different ssh_config files ({shown})",
            fix="give every Connection the same Config, or make one Group per ssh_config",
        )
    timeouts = [t for t in (_connect_timeout(c) for c in connections) if t is not None]
    return GroupSettings(
        ssh_config_path=paths.pop() if paths else None,
        connect_timeout_s=max(timeouts) if timeouts else None,
    )
