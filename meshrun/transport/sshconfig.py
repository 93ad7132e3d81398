"""OpenSSH's own answer to "how do I reach HOST": ``ssh -G``, asked only when it matters.

A fleet tool must reach a host exactly as the user's ``ssh HOST`` does: the system and
user config, ``Include``, ``Match``, ``Host`` patterns, tokens, first-value-wins. Rather
than re-implement ``readconf.c``, we ask the OpenSSH client itself: ``ssh -G`` prints
every resolved setting without connecting, in about 5 ms.

Five milliseconds per host is still too much on the fan-out path of a large fleet, so:

- each distinct (alias, user, port) is resolved once per run, whoever asks, and the
  first resolution of a fleet runs in parallel (:meth:`SSHConfigResolver.resolve_all`);
- a cheap scan of the config files (:class:`ConfigScan`, keywords and ``Host`` patterns
  only) answers whether anything in them could change a setting meshrun uses for this
  alias that the inventory has not already pinned. When nothing could, ``ssh -G`` is
  skipped and OpenSSH's defaults are used. The scan is conservative: any ``Match``
  block, ``CanonicalizeHostname`` or unreadable ``Include`` sends the host to ``ssh -G``;
- hosts that the config treats alike are resolved once (:meth:`ConfigScan.shape`).
  With no ``Match``, ``CanonicalizeHostname`` or uncertain ``Include``, ``ssh -G``'s
  answer for an alias is decided by which ``Host`` sections apply to it, the ``-l``/``-p``
  asked, and the alias itself, which OpenSSH prints only as ``host`` (as given) and
  ``hostname`` (ASCII-lowercased; an address in its canonical form is left as is) --
  unless an applying section sets a keyword that uses the alias (``HostName``,
  ``ProxyCommand``...) or a ``%`` token. So one ``ssh -G`` per such *shape* is enough:
  the other aliases of the shape get its output with those two lines rewritten. A
  ``Host *`` config (the CI recipes') costs one ``ssh -G`` instead of one per host
  (256 hosts: about 1.3 CPU-s of fork+exec). Anything less certain (a mixed-case alias
  a pattern would match differently case-blind, an address not in canonical form) is
  resolved per host.

``~`` here is the home directory of the user's passwd entry, as OpenSSH has it, not
``$HOME``: a config read by ``ssh`` and by meshrun must mean the same files.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING, TypeVar

from meshrun.errors import InputError
from meshrun.records import record

if TYPE_CHECKING:
    import concurrent.futures

__all__ = [
    "ConfigScan",
    "SSHConfigResolver",
    "SSHSettings",
    "expand_tokens",
    "home_dir",
    "match_pattern_list",
    "parse_jump_spec",
    "renamed_dump",
    "split_jumps",
    "ssh_hostname",
    "token_values",
]

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
_DEFAULT_IDENTITIES = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_xmss",
    "~/.ssh/id_dsa",
)
_DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
_DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
_MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH

#: ssh_config keywords whose values meshrun uses. A config that sets none of them for
#: an alias cannot change how meshrun reaches it. (``HashKnownHosts``, which only
#: decides how an accepted new key is written, is left out on purpose: Debian's own
#: /etc/ssh/ssh_config sets it for every host, which would defeat the scan.)
RELEVANT_KEYWORDS = frozenset(
    {
        "hostname",
        "port",
        "user",
        "identityfile",
        "identitiesonly",
        "identityagent",
        "certificatefile",
        "proxyjump",
        "proxycommand",
        "hostkeyalias",
        "userknownhostsfile",
        "globalknownhostsfile",
        "connecttimeout",
        "serveraliveinterval",
        "serveralivecountmax",
        "batchmode",  # BatchMode yes makes OpenSSH's ServerAliveInterval default 300
    }
)
#: Keywords that make OpenSSH re-read the config or rewrite the name: never guessed.
_ALWAYS_RESOLVE = frozenset({"canonicalizehostname"})
#: Keywords whose value uses or replaces the alias (or runs with it): a section setting
#: one, or any value with a ``%`` token, makes each alias it applies to its own shape.
_PER_ALIAS_KEYWORDS = frozenset(
    {
        "hostname",
        "hostkeyalias",
        "proxycommand",
        "proxyjump",
        "localcommand",
        "controlpath",
        "knownhostscommand",
    }
)


@functools.lru_cache(maxsize=1)
def home_dir() -> str:
    """The home directory OpenSSH uses for ``~``: the passwd entry's, not ``$HOME``.

    Cached: a process has one uid, and resolving a fleet asks for it many times per host.
    """
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # no passwd entry (some containers): OpenSSH would fail; be lenient
        return os.path.expanduser("~")


def local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        import getpass

        return getpass.getuser()


def expand_home(path: str) -> str:
    """``~/x`` against the passwd home (OpenSSH's ``~``); other paths unchanged."""
    if path == "~" or path.startswith("~/"):
        return home_dir() + path[1:]
    return os.path.expanduser(path) if path.startswith("~") else path


@record
class SSHSettings:
    """The settings OpenSSH resolved for one destination, as meshrun uses them.

    Paths are absolute (``~`` and ``%`` tokens expanded), except ``proxy_command``,
    whose tokens are expanded when it is run (they depend on the hop being dialled).
    """

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = _DEFAULT_IDENTITIES
    identities_only: bool = False
    identity_agent: str | None = None  # None: $SSH_AUTH_SOCK; "none": no agent
    certificate_files: tuple[str, ...] = ()
    proxy_jump: tuple[str, ...] = ()  # hops in dial order: "[user@]host[:port]"
    proxy_command: str | None = None
    host_key_alias: str | None = None
    user_known_hosts: tuple[str, ...] = _DEFAULT_USER_KNOWN_HOSTS
    global_known_hosts: tuple[str, ...] = _DEFAULT_GLOBAL_KNOWN_HOSTS
    connect_timeout_s: float | None = None
    server_alive_interval_s: int = 0
    server_alive_count_max: int = 3
    hash_known_hosts: bool = False


# -- patterns and tokens ----------------------------------------------------------------


def _glob_body(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


class _PatternList:
    """A compiled pattern list: literal names in a set, wildcards in one regex each side."""

    __slots__ = ("case_blind", "neg_names", "neg_re", "pos_names", "pos_re")

    def __init__(self, patterns: tuple[str, ...], case_blind: bool = True) -> None:
        self.case_blind = case_blind
        flags = (re.IGNORECASE | re.DOTALL) if case_blind else re.DOTALL
        sides: dict[bool, tuple[set[str], list[str]]] = {True: (set(), []), False: (set(), [])}
        for pattern in patterns:
            negated = pattern.startswith("!")
            body = pattern[1:] if negated else pattern
            names, globs = sides[negated]
            if "*" in body or "?" in body:
                globs.append(_glob_body(body))
            else:
                names.add(body.lower() if case_blind else body)
        self.pos_names, pos = sides[False]
        self.neg_names, neg = sides[True]
        self.pos_re = re.compile("|".join(pos), flags) if pos else None
        self.neg_re = re.compile("|".join(neg), flags) if neg else None

    def matches(self, name: str) -> bool:
        lowered = name.lower() if self.case_blind else name
        if lowered in self.neg_names or (self.neg_re and self.neg_re.fullmatch(name)):
            return False
        return lowered in self.pos_names or bool(self.pos_re and self.pos_re.fullmatch(name))


@functools.lru_cache(maxsize=4096)
def _compiled(patterns: tuple[str, ...], case_blind: bool = True) -> _PatternList:
    return _PatternList(patterns, case_blind)


def match_pattern_list(name: str, patterns: Iterable[str]) -> bool:
    """OpenSSH's ``match_pattern_list``: any positive pattern matches and no ``!``
    pattern does (case-insensitive, ``*`` and ``?`` wildcards)."""
    return _compiled(tuple(patterns)).matches(name)


_TOKEN_RE = re.compile(r"%(.)")


def expand_tokens(text: str, values: dict[str, str]) -> str:
    """Replace OpenSSH ``%x`` tokens from ``values`` (``%%`` is a percent sign).

    An unknown token is an InputError, as ``ssh`` refuses it too.
    """

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "%":
            return "%"
        if key not in values:
            raise InputError(
                f"ssh_config: unknown token %{key} in {text!r}",
                fix="see TOKENS in `man ssh_config` for the tokens each keyword accepts",
            )
        return values[key]

    return _TOKEN_RE.sub(one, text)


def token_values(alias: str, hostname: str, port: int, user: str) -> dict[str, str]:
    home = home_dir()
    return {
        "d": home,
        "h": hostname,
        "i": str(os.getuid()),
        "L": socket.gethostname().split(".")[0],
        "l": socket.gethostname(),
        "n": alias,
        "p": str(port),
        "r": user,
        "u": local_user(),
    }


def parse_jump_spec(spec: str) -> tuple[str | None, str, int | None]:
    """One ProxyJump hop, ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    text = spec.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
    user, _, rest = text.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = _port(tail[1:], spec)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = _port(port_text, spec)
    if not host:
        raise InputError(
            f"ProxyJump {spec!r}: no host name", fix="write [user@]host[:port] for each hop"
        )
    return (user or None), host, port


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InputError(f"ProxyJump {spec!r}: bad port {text!r}", fix="a port is 1-65535")
    return int(text)


def split_jumps(value: str | None) -> tuple[str, ...]:
    """``a,b`` -> ("a", "b"); ``none`` or empty -> ()."""
    if not value or value.strip().lower() == "none":
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


# -- the names ssh -G prints for an alias -------------------------------------------------

#: Aliases whose printed names are derived (others get their own ``ssh -G``): ASCII
#: letters, digits and ``._-`` (a name), or an address. OpenSSH 9.6 and later refuse
#: some other characters; a Unicode name would lowercase differently in C and Python.
_PLAIN_ALIAS_RE = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:-]*", re.ASCII)


def ssh_hostname(alias: str) -> str | None:
    """What ``ssh -G alias`` prints as ``hostname`` when no ``HostName`` applies, or
    None when we do not derive it (the alias then gets its own ``ssh -G``).

    OpenSSH (ssh.c) first tries the alias as a numeric address (``getaddrinfo`` with
    ``AI_NUMERICHOST``, then ``getnameinfo``: ``127.1`` prints as ``127.0.0.1``); a
    name is lowercased (``tolower``: ASCII only). An address is derived only when it
    is already in its canonical form, which both rules leave as it is.
    """
    if not _PLAIN_ALIAS_RE.fullmatch(alias):
        return None
    canonical = _numeric_form(alias)
    if canonical is None:
        return None if ":" in alias else alias.lower()
    return alias if canonical == alias else None


def _numeric_form(alias: str) -> str | None:
    """``alias`` as a numeric address in the form ``getnameinfo`` prints it (ssh.c tries
    an alias as one first), or None when it is not one."""
    try:
        found = socket.getaddrinfo(
            alias,
            "22",
            type=socket.SOCK_STREAM,
            flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
        return socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST)[0]
    except (OSError, UnicodeError, ValueError, IndexError):
        return None


def _default_hostname(alias: str) -> str:
    """``hostname`` as ssh.c prints it with no config, for any alias: an address in the
    form ``getnameinfo`` gives unless that differs only in case, a name ASCII-lowercased.
    (``AddressFamily`` narrows which addresses parse; with none set, this is exact.)
    """
    derived = ssh_hostname(alias)
    if derived is not None:
        return derived
    canonical = _numeric_form(alias)
    if canonical is None:
        return alias.translate(_ASCII_LOWER)
    return alias if canonical.lower() == alias.lower() else canonical


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def renamed_dump(dump: str, alias: str) -> str | None:
    """``ssh -G`` output of another alias of the same shape, as ``alias`` would get it:
    its ``host`` and ``hostname`` lines rewritten. None when ``alias``'s names are not
    derived, or ``dump`` does not print one ``host`` and one ``hostname`` named as
    :func:`ssh_hostname` says for its own alias (an OpenSSH that names them otherwise
    is never second-guessed).
    """
    hostname = ssh_hostname(alias)
    if hostname is None:
        return None
    lines = dump.splitlines(keepends=True)
    where: dict[str, list[int]] = {"host": [], "hostname": []}
    for index, line in enumerate(lines):
        keyword = line.partition(" ")[0]
        if keyword in where:
            where[keyword].append(index)
    if len(where["host"]) != 1 or len(where["hostname"]) != 1:
        return None
    (host_at,), (hostname_at,) = where["host"], where["hostname"]
    own_alias = lines[host_at].rstrip("\n").partition(" ")[2]
    if ssh_hostname(own_alias) != lines[hostname_at].rstrip("\n").partition(" ")[2]:
        return None
    lines[host_at] = f"host {alias}\n"
    lines[hostname_at] = f"hostname {hostname}\n"
    return "".join(lines)


# -- the cheap scan ----------------------------------------------------------------------


@record(frozen=False, slots=False)
class _Block:
    """One ``Host`` or ``Match`` section (or the unconditional head of a file)."""

    patterns: tuple[str, ...] | None  # None: Match (unknown), () : top of file (all)
    keywords: set[str] = field(default_factory=set)
    per_alias: bool = False  # sets a keyword of _PER_ALIAS_KEYWORDS or a %token


_SPLIT_RE = re.compile(r"\s*=\s*|\s+", re.ASCII)


def _split_line(line: str) -> tuple[str, str] | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = _SPLIT_RE.split(text, maxsplit=1)
    keyword = parts[0].lower()
    return keyword, (parts[1] if len(parts) > 1 else "")


def _args(value: str) -> list[str]:
    """Whitespace-separated arguments, honouring double quotes as OpenSSH does."""
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', value)]


class ConfigScan:
    """Keywords and ``Host`` patterns of the config files, to skip ``ssh -G`` safely.

    Not a resolver: it only answers "could these files change a setting meshrun uses
    for this alias?" and says yes whenever it cannot be sure.
    """

    def __init__(self, files: Sequence[tuple[str, str]]) -> None:
        """``files``: (path, directory relative Includes are read from), in order."""
        self.blocks: list[_Block] = []
        self.uncertain = False  # an unreadable Include, a cycle: resolve everything
        self.files_read: list[str] = []
        self._answers: dict[tuple[str, frozenset[str]], bool] = {}
        self._shapes: dict[str, tuple[int, ...] | None] = {}
        for path, include_dir in files:
            self._read(path, include_dir, 0, None)
        #: Only ``Host`` sections decide what applies (no Match, no re-read, no doubt).
        self.shapes_exact = not self.uncertain and not any(
            block.patterns is None or block.keywords & _ALWAYS_RESOLVE for block in self.blocks
        )

    def _read(self, path: str, include_dir: str, depth: int, inherited: _Block | None) -> None:
        if depth > _MAX_INCLUDE_DEPTH:
            self.uncertain = True
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except FileNotFoundError:
            if depth:
                return  # OpenSSH ignores missing Include files
            return
        except OSError:
            self.uncertain = True
            return
        self.files_read.append(path)
        block = inherited if inherited is not None else _Block(patterns=())
        self.blocks.append(block)
        for line in lines:
            split = _split_line(line)
            if split is None:
                continue
            keyword, value = split
            if keyword == "host":
                block = _Block(patterns=tuple(_args(value)))
                self.blocks.append(block)
            elif keyword == "match":
                block = _Block(patterns=None)
                self.blocks.append(block)
            elif keyword == "include":
                for pattern in _args(value):
                    full = expand_home(pattern)
                    if not os.path.isabs(full):
                        full = os.path.join(include_dir, full)
                    for included in sorted(glob.glob(full)):
                        self._read(included, include_dir, depth + 1, block)
                    if any(ch in full for ch in "%$"):
                        self.uncertain = True  # tokens/env in Include paths: let ssh decide
            else:
                block.keywords.add(keyword)
                if keyword in _PER_ALIAS_KEYWORDS or "%" in value:
                    block.per_alias = True
        # Host/Match sections do not continue into the file that included this one,
        # but OpenSSH does carry on with the includer's current section.

    def may_change(self, alias: str, pinned: frozenset[str]) -> bool:
        """Could a section that applies to ``alias`` set a used keyword not ``pinned``?"""
        key = (alias, pinned)
        found = self._answers.get(key)
        if found is None:
            found = self._answers[key] = self._may_change(alias, pinned)
        return found

    def shape(self, alias: str) -> tuple[int, ...] | None:
        """The sections that apply to ``alias``, when they and the alias's two printed
        names are all its ``ssh -G`` output depends on; None when that is not certain.

        Aliases with the same shape (and the same ``-l``/``-p``) get the same ``ssh -G``
        output but for the ``host`` and ``hostname`` lines (:func:`renamed_dump`).
        OpenSSH matches ``Host`` patterns case-sensitively (9.2: ``Host web*`` does not
        apply to ``WEB1``); an alias whose sections would differ case-blind is left to
        its own ``ssh -G``, so a version that lowercases first cannot be misread.
        """
        if alias not in self._shapes:
            self._shapes[alias] = self._shape(alias)
        return self._shapes[alias]

    def _shape(self, alias: str) -> tuple[int, ...] | None:
        if not self.shapes_exact or ssh_hostname(alias) is None:
            return None
        applying: list[int] = []
        for index, block in enumerate(self.blocks):
            if block.patterns:  # a Host line; () is a file's head, which always applies
                exact = _compiled(block.patterns, False).matches(alias)
                if exact != _compiled(block.patterns).matches(alias):
                    return None
                if not exact:
                    continue
            if block.per_alias:
                return None
            applying.append(index)
        return tuple(applying)

    def _may_change(self, alias: str, pinned: frozenset[str]) -> bool:
        if self.uncertain:
            return True
        for block in self.blocks:
            if block.keywords & _ALWAYS_RESOLVE:
                return True
            wanted = (block.keywords & RELEVANT_KEYWORDS) - pinned
            if not wanted:
                continue
            if block.patterns is None:  # Match: criteria we do not evaluate
                return True
            # OpenSSH 9.2 matches Host patterns case-sensitively; either way may apply
            # (case-blind alone misses `Host db? !DB*` for db1: the negation is not hit)
            if (
                not block.patterns
                or _compiled(block.patterns).matches(alias)
                or _compiled(block.patterns, False).matches(alias)
            ):
                return True
        return False


# -- the resolver --------------------------------------------------------------------------


def _parse_dump(text: str) -> dict[str, list[str]]:
    """``ssh -G`` output: ``keyword value`` per line; repeated keywords accumulate."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, value = line.partition(" ")
        if keyword:
            out.setdefault(keyword.lower(), []).append(value)
    return out


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "true")


_Query = tuple[str, str | None, int | None]  # alias, ssh -l, ssh -p
_ShapeKey = tuple[tuple[int, ...], str | None, int | None]  # sections, ssh -l, ssh -p
_K = TypeVar("_K")
_V = TypeVar("_V")


class SSHConfigResolver:
    """Resolves destinations the way the user's ``ssh`` would, once each, thread-safe.

    ``config_path`` None reads what ``ssh`` reads (``~/.ssh/config``, then
    ``/etc/ssh/ssh_config``); a path reads only that file (like ``ssh -F``); a path
    that does not exist reads nothing.
    """

    def __init__(self, config_path: str | None = None, *, ssh_binary: str = "ssh") -> None:
        self._ssh = ssh_binary
        self._lock = threading.Lock()
        self._cache: dict[
            tuple[str, str | None, int | None], concurrent.futures.Future[SSHSettings]
        ] = {}
        #: The ``ssh -G`` output of the first alias of each shape; None when it failed
        #: or names its alias otherwise than derived (the others then ask for their own).
        self._shapes: dict[_ShapeKey, concurrent.futures.Future[str | None]] = {}
        self.ssh_g_runs = 0  # how many ``ssh -G`` this resolver ran (for tests, benches)
        self._config_arg: list[str] = []
        if config_path is None:
            home = home_dir()
            files = [
                (os.path.join(home, ".ssh", "config"), os.path.join(home, ".ssh")),
                (SYSTEM_CONFIG, os.path.dirname(SYSTEM_CONFIG)),
            ]
        else:
            path = expand_home(config_path)
            if os.path.exists(path):
                files = [(path, os.path.join(home_dir(), ".ssh"))]
                self._config_arg = ["-F", path]
            else:
                files = []
                self._config_arg = ["-F", "/dev/null"]
        self.scan = ConfigScan(files)

    def resolve(
        self,
        alias: str,
        *,
        user: str | None = None,
        port: int | None = None,
        pinned: frozenset[str] = frozenset(),
    ) -> SSHSettings:
        """The settings for ``ssh [-l user] [-p port] alias``.

        ``pinned`` names the keywords the caller will override anyway (inventory keys);
        when the config could change nothing else for ``alias``, ``ssh -G`` is skipped.
        """
        key = (alias, user, port)
        if not self.scan.may_change(alias, pinned | _pinned_by_args(user, port)):
            return self._defaults(alias, user, port)
        future, owner = self._claim(self._cache, key)
        if owner:
            try:
                future.set_result(self._resolve_now(alias, user, port))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def _claim(
        self, table: dict[_K, concurrent.futures.Future[_V]], key: _K
    ) -> tuple[concurrent.futures.Future[_V], bool]:
        """``table[key]``'s future, made if missing; True when this caller made it and
        must resolve it (the others wait on it: one ``ssh -G`` per key, whoever asks)."""
        with self._lock:
            future = table.get(key)
            if future is not None:
                return future, False
            import concurrent.futures  # only when ssh -G must run: off the usual start

            future = table[key] = concurrent.futures.Future()
            return future, True

    def _shape_key(self, alias: str, user: str | None, port: int | None) -> _ShapeKey | None:
        shape = self.scan.shape(alias)
        return None if shape is None else (shape, user, port)

    def _resolve_now(self, alias: str, user: str | None, port: int | None) -> SSHSettings:
        key = self._shape_key(alias, user, port)
        if key is None:
            return settings_from_dump(alias, self._ssh_g(alias, user, port))
        future, owner = self._claim(self._shapes, key)
        if owner:
            try:
                dump = self._ssh_g(alias, user, port)
            except BaseException:
                future.set_result(None)  # the others get their own answer (or error)
                raise
            future.set_result(dump if renamed_dump(dump, alias) == dump else None)
            return settings_from_dump(alias, dump)
        shared = future.result()
        renamed = None if shared is None else renamed_dump(shared, alias)
        if renamed is None:
            renamed = self._ssh_g(alias, user, port)
        return settings_from_dump(alias, renamed)

    def resolve_all(
        self,
        queries: Iterable[tuple[str, str | None, int | None, frozenset[str]]],
        *,
        workers: int = 8,
    ) -> None:
        """Warm the cache for many destinations at once (subprocesses run in parallel).

        Errors are left in the cache: the host that needs a failed resolution gets it.
        """
        todo: dict[_Query, frozenset[str]] = {}
        shapes: set[_ShapeKey] = set()
        for alias, user, port, pinned in queries:
            if not self.scan.may_change(alias, pinned | _pinned_by_args(user, port)):
                continue
            shape = self._shape_key(alias, user, port)
            if shape is not None:
                if shape in shapes:
                    continue  # derived from the first alias of its shape when asked
                shapes.add(shape)
            todo[(alias, user, port)] = pinned
        if len(todo) <= 1:
            return
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(min(workers, len(todo))) as pool:
            futures = [
                pool.submit(self.resolve, a, user=u, port=p, pinned=pinned)
                for (a, u, p), pinned in todo.items()
            ]
            for f in futures:
                f.exception()

    def _defaults(self, alias: str, user: str | None, port: int | None) -> SSHSettings:
        return SSHSettings(
            alias=alias,
            hostname=_default_hostname(alias),
            port=port or 22,
            user=user or local_user(),
            identity_files=tuple(expand_home(p) for p in _DEFAULT_IDENTITIES),
            user_known_hosts=tuple(expand_home(p) for p in _DEFAULT_USER_KNOWN_HOSTS),
        )

    def _ssh_g(self, alias: str, user: str | None, port: int | None) -> str:
        """``ssh -G``'s output for ``ssh [-l user] [-p port] alias``."""
        if shutil.which(self._ssh) is None:
            raise InputError(
                f"ssh_config has settings for {alias!r} but the OpenSSH client `ssh`, which "
                "meshrun asks to resolve them (`ssh -G`), is not installed",
                fix="install openssh-client (apt-get install openssh-client), or pin the "
                "host's address, port, user and identity in the inventory",
            )
        argv = [self._ssh, *self._config_arg, "-G"]
        if user:
            argv += ["-l", user]
        if port:
            argv += ["-p", str(port)]
        argv += ["--", alias]
        with self._lock:
            self.ssh_g_runs += 1
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            problem = " / ".join(
                line for line in proc.stderr.strip().splitlines() if "Pseudo-terminal" not in line
            )
            raise InputError(
                f"ssh_config: OpenSSH cannot resolve {alias!r}: {problem or 'ssh -G failed'}",
                fix="fix the ssh_config line it names (`ssh -G HOST` shows the same error)",
            )
        return proc.stdout


def _pinned_by_args(user: str | None, port: int | None) -> frozenset[str]:
    pinned = set()
    if user:
        pinned.add("user")
    if port:
        pinned.add("port")
    return frozenset(pinned)


def settings_from_dump(alias: str, text: str) -> SSHSettings:
    """SSHSettings from ``ssh -G`` output, with ``~`` and ``%`` tokens expanded."""
    dump = _parse_dump(text)

    def one(keyword: str) -> str | None:
        values = dump.get(keyword)
        return values[0] if values else None

    hostname = one("hostname") or alias
    port = int(one("port") or 22)
    user = one("user") or local_user()
    tokens = token_values(alias, hostname, port, user)
    host_key_alias = one("hostkeyalias")
    tokens["k"] = host_key_alias or hostname

    def path(value: str) -> str:
        return expand_home(expand_tokens(value, tokens))

    def paths(keyword: str) -> tuple[str, ...]:
        out: list[str] = []
        for value in dump.get(keyword, []):
            out.extend(path(v) for v in _args(value) if v.lower() != "none")
        return tuple(out)

    agent = one("identityagent")
    if agent is not None and agent.lower() not in ("none", "ssh_auth_sock"):
        agent = expand_home(expand_tokens(agent, tokens))
        if agent.startswith("$"):
            agent = os.environ.get(agent[1:], "none")
    elif agent is not None and agent.lower() == "ssh_auth_sock":
        agent = None
    proxy_command = one("proxycommand")
    if proxy_command is not None and proxy_command.strip().lower() == "none":
        proxy_command = None
    timeout = one("connecttimeout")
    return SSHSettings(
        alias=alias,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=paths("identityfile"),
        identities_only=_yes(one("identitiesonly")),
        identity_agent=agent.lower() if agent and agent.lower() == "none" else agent,
        certificate_files=paths("certificatefile"),
        proxy_jump=split_jumps(one("proxyjump")),
        proxy_command=proxy_command,
        host_key_alias=host_key_alias,
        user_known_hosts=paths("userknownhostsfile"),
        global_known_hosts=paths("globalknownhostsfile"),
        connect_timeout_s=float(timeout) if timeout and timeout.isdigit() else None,
        server_alive_interval_s=int(one("serveraliveinterval") or 0),
        server_alive_count_max=int(one("serveralivecountmax") or 3),
        hash_known_hosts=_yes(one("hashknownhosts")),
    )
