"""meshrun's output collector: expands output patterns in a workdir and hashes every file.

Stdlib only, Python 3.6+. This file is sent to a host as is (the text of
``python3 -I -S -c``, run in the task's workdir) and never imported by the
coordinator: :func:`meshrun.integrity.collect.collect_source` reads it.

Reads ``{"patterns": [...]}`` (JSON) on stdin. Prints ``{"root": cwd, "files": [{path,
size, sha256, mode}], "errors": [{pattern, message, kind}]}``, ASCII-only JSON, so
names with newlines or odd bytes survive any locale. The pattern rules are those of
:mod:`meshrun.integrity.collect`.
"""

import fnmatch
import hashlib
import json
import os
import stat
import sys

CHUNK = 1 << 20
MAGIC = set("*?[")
OWN = ".meshrun"  # meshrun's own directory in the workdir (agent, scripts): never taken
REAL_DIRS = {}  # directory (relative) -> its real path


def main():
    request = json.loads(sys.stdin.read())
    root = os.getcwd()
    real_root = os.path.realpath(root)
    files = {}
    errors = []
    for raw in request["patterns"]:
        Pattern(raw, real_root, files, errors).run()
    out = {"root": root, "files": [files[k] for k in sorted(files)], "errors": errors}
    sys.stdout.write(json.dumps(out, ensure_ascii=True))


def show(path):
    try:
        path.encode("utf-8")
        return repr(path)
    except UnicodeEncodeError:
        return repr(os.fsencode(path))


class Pattern:
    def __init__(self, raw, real_root, files, errors):
        self.raw = raw
        self.real_root = real_root
        self.files = files
        self.errors = errors
        self.found = 0

    def error(self, message, kind="refused"):
        self.errors.append({"pattern": self.raw, "message": message, "kind": kind})

    def unreadable(self, path, what, exc):
        self.error(show(path) + what + (exc.strerror or str(exc)), "unreadable")

    def run(self):
        text = self.raw
        optional = text.startswith("?")
        if optional:
            text = text[1:]
        if not text:
            return self.error("the pattern is empty")
        if "\0" in text:
            return self.error("the pattern contains a NUL byte")
        if text.startswith("/"):
            return self.error("it is absolute; outputs are paths inside the workdir")
        dir_only = text.endswith("/")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            return self.error("it has a '..' part; outputs must stay inside the workdir")
        if not parts:
            parts = ["**"]
        matches = set()
        self.expand("", parts, dir_only, matches)
        for rel in sorted(matches):
            self.take(rel)
        if not self.found and not optional:
            self.error("it matched no file (mark it optional with a leading '?')", "unmatched")

    # -- expansion ----------------------------------------------------------------

    def expand(self, base, parts, dir_only, out):
        head, rest = parts[0], parts[1:]
        if head == "**":
            if not rest:
                out.add(base or ".")
                return
            self.expand(base, rest, dir_only, out)
            for name, kind in self.listdir(base):
                if kind == "dir":
                    self.expand(join(base, name), parts, dir_only, out)
            return
        if not MAGIC.intersection(head):
            names = [] if not base and head == OWN else [(head, self.kind(join(base, head)))]
        else:
            names = [(n, k) for n, k in self.listdir(base) if fnmatch.fnmatchcase(n, head)]
        for name, kind in names:
            path = join(base, name)
            if kind is None:
                continue
            if rest:
                if kind == "dir":
                    self.expand(path, rest, dir_only, out)
                elif kind == "dirlink":
                    self.error(show(path) + ": is a symlink to a directory, which is not walked")
            elif not dir_only or kind in ("dir", "dirlink"):
                out.add(path)

    def kind(self, path):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.unreadable(path, ": cannot stat: ", exc)
            return None
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISLNK(mode):
            return "dirlink" if os.path.isdir(path) else "link"
        return "other"

    def listdir(self, base):
        try:
            with os.scandir(base or ".") as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable(base or ".", ": cannot list: ", exc)
            return []
        result = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    kind = "dir"
                elif entry.is_symlink():
                    kind = "dirlink" if entry.is_dir() else "link"
                else:
                    kind = "other"
            except OSError as exc:
                self.unreadable(join(base, entry.name), ": ", exc)
                continue
            if not base and entry.name == OWN:
                continue  # '*', '**' and '.' never reach meshrun's own files
            result.append((entry.name, kind))
        return result

    # -- taking matches ----------------------------------------------------------

    def take(self, rel):
        kind = self.kind(rel) if rel != "." else "dir"
        if kind == "dir":
            for name, sub in self.listdir("" if rel == "." else rel):
                self.take_walk(join("" if rel == "." else rel, name), sub)
        elif kind == "dirlink":
            self.error(show(rel) + ": is a symlink to a directory, which is not walked")
        elif kind is not None:
            self.take_file(rel)

    def take_walk(self, rel, kind):
        if kind == "dir":
            for name, sub in self.listdir(rel):
                self.take_walk(join(rel, name), sub)
        elif kind == "dirlink":
            self.error(show(rel) + ": is a symlink to a directory, which is not walked")
        else:
            self.take_file(rel)

    def take_file(self, rel):
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return self.error(show(rel) + ": the name is not valid UTF-8")
        try:
            mode = os.lstat(rel).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(rel)
                mode = os.stat(rel).st_mode
            else:  # only the directory can lead elsewhere: resolve each one once
                head, _, tail = rel.rpartition("/")
                if head not in REAL_DIRS:
                    REAL_DIRS[head] = os.path.realpath(head or ".")
                real = REAL_DIRS[head].rstrip("/") + "/" + tail
        except OSError as exc:
            return self.error(show(rel) + ": cannot stat: " + (exc.strerror or str(exc)))
        if real != self.real_root and not real.startswith(self.real_root.rstrip("/") + "/"):
            return self.error(show(rel) + ": resolves to " + show(real) + ", outside the workdir")
        try:
            if not stat.S_ISREG(mode):
                return self.error(show(rel) + ": is a special file, not a regular file")
            fd = os.open(rel, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            return self.unreadable(rel, ": cannot open: ", exc)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return self.error(show(rel) + ": is a special file, not a regular file")
            digest = hashlib.sha256()
            size = 0
            buffer = bytearray(min(CHUNK, info.st_size + 1))  # a fresh 1 MiB per small file is slow
            view = memoryview(buffer)
            while True:
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])
                size += count
        self.found += 1
        self.files[rel] = {
            "path": rel,
            "size": size,
            "sha256": digest.hexdigest(),
            "mode": stat.S_IMODE(info.st_mode),
        }


def join(base, name):
    return base + "/" + name if base else name


if __name__ == "__main__":
    main()
