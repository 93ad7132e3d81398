"""rsync's remote shell inside meshrun: a stand-in for ``ssh`` that borrows meshrun's
own authenticated SSH connection instead of opening a second one.

meshrun runs rsync with ``-e "PYTHON -I -S rsh_helper.py SOCKET"``; rsync then starts
this program as ``rsh_helper.py SOCKET [-l USER] HOSTTOKEN rsync --server ...``, exactly
as it would start ``ssh``. The program connects to the coordinator's channel relay (the
unix socket ``SOCKET``, see :mod:`meshrun.transport.channel_relay`), hands it its own
stdin, stdout and stderr (``SCM_RIGHTS``) with the remote command line, and waits: the
relay opens an exec channel on the host's pooled connection and pumps rsync's bytes
straight between those descriptors and the channel, so no byte passes through this
process. The relay's one reply is the remote exit status, which becomes this program's
exit code (255 when the connection was lost, as with ssh).

Every request carries the run's secret from ``MESHRUN_RSH_TOKEN`` (the environment,
never argv: argv is visible to every local user). If rsync dies, this program notices
(its parent changes) and exits, which makes the relay close the channel.

It must start fast (rsync starts one per transfer): standard library builtins only, no
``socket`` module (its import costs more than the interpreter), nothing of meshrun or
paramiko.
"""

import _socket
import os
import sys

TOKEN_ENV = "MESHRUN_RSH_TOKEN"
MAGIC = b"meshrun-rsh/1"
MESSAGE_PREFIX = "meshrun rsh: "  # rsync.SHELL_MESSAGE_PREFIX
MAX_REPLY = 65536
PARENT_POLL_S = 0.2


def parse_args(args: list[str]) -> tuple[str, str, str, str]:
    """``(socket, user, host, command)`` from ``SOCKET [-l USER] HOST ARG...``.

    The remote command is the arguments joined with spaces, as OpenSSH's ssh does:
    rsync already quotes them for the remote shell.
    """
    if len(args) < 3:
        raise ValueError("usage: rsh_helper.py SOCKET [-l USER] HOST COMMAND...")
    path, rest = args[0], list(args[1:])
    user = ""
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag == "-l" and rest:
            user = rest.pop(0)
        elif flag.startswith("-l") and len(flag) > 2:
            user = flag[2:]
        elif flag in ("-4", "-6"):
            continue
        else:
            raise ValueError("unsupported option " + repr(flag))
    if len(rest) < 2:
        raise ValueError("no host or no remote command")
    return path, user, rest[0], " ".join(rest[1:])


def encode_request(token: str, host: str, user: str, command: str) -> bytes:
    """One request: a 4-byte big-endian length, then NUL-separated fields."""
    fields = [MAGIC, token.encode(), host.encode(), user.encode(), os.fsencode(command)]
    for field in fields:
        if b"\0" in field:
            raise ValueError("a NUL byte in the request")
    body = b"\0".join(fields)
    return len(body).to_bytes(4, "big") + body


def decode_reply(data: bytes) -> tuple[int, str]:
    """``(exit_code, message)`` from the relay's reply, one line ``CODE[ MESSAGE]``."""
    line, newline, _ = data.partition(b"\n")
    if not newline:
        raise ValueError("incomplete reply")
    code, _, message = line.partition(b" ")
    status = int(code.decode("ascii"))
    if not 0 <= status <= 255:
        raise ValueError("exit status out of range")
    return status, message.decode("utf-8", "replace")


def _say(text: str) -> None:
    try:  # noqa: SIM105 (contextlib's import would cost more than this program)
        os.write(2, (MESSAGE_PREFIX + text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def main(argv: list[str]) -> int:
    try:
        path, user, host, command = parse_args(argv[1:])
        request = encode_request(os.environ.get(TOKEN_ENV, ""), host, user, command)
    except ValueError as exc:
        _say(str(exc))
        return 255
    parent = os.getppid()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
        sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(request):
            sock.sendall(request[sent:])
    except OSError as exc:
        _say("cannot reach meshrun's connection relay: " + str(exc))
        return 255
    # The relay holds rsync's pipes now; ours must not keep them open.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    reply = b""
    sock.settimeout(PARENT_POLL_S)
    while b"\n" not in reply and len(reply) < MAX_REPLY:
        try:
            data = sock.recv(MAX_REPLY)
        except TimeoutError:
            if os.getppid() != parent:  # rsync is gone: let the relay close the channel
                return 255
            continue
        except OSError as exc:
            _say("lost meshrun's connection relay: " + str(exc))
            return 255
        if not data:
            break
        reply += data
    try:
        status, message = decode_reply(reply)
    except ValueError:
        _say("the connection to the host was lost")
        return 255
    if message:
        _say(message)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:  # Ctrl-C reached rsync's process group: quietly, as ssh
        sys.exit(255)
