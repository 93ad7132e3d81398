"""Fabric interop: ``meshrun.fabric.Group`` for code written against ``fabric.Group``.

Switch with one import::

    from meshrun.fabric import Group          # was: from fabric import ThreadingGroup

    with Group("web1", "web2", user="deploy",
               connect_kwargs={"key_filename": "~/.ssh/deploy"}) as group:
        results = group.run("uptime", hide=True)      # fabric.GroupResult
        for cxn, result in results.items():
            print(cxn.host, result.stdout.strip())
        group.put("app.tar.gz", "/srv/")
        group.get("/var/log/app.log")                # into ./web1/, ./web2/

Results and errors are Fabric's own (``GroupResult``, ``fabric.runners.Result``,
``fabric.transfer.Result``, ``GroupException``, invoke's ``UnexpectedExit``), so code
that inspects them keeps working; connecting, host keys (strict), parallelism and the
commands' lifetime are meshrun's (:mod:`meshrun.fabric.group`). Settings come from the
``fabric.Connection``/``fabric.Config`` objects (:mod:`meshrun.fabric.settings`); what
meshrun cannot honour is refused with :class:`NotSupported`, naming the setting and
the fix.

Needs Fabric (``pip install 'meshrun[fabric]'``); ``import meshrun`` never loads it.
"""

from meshrun.fabric.group import Group
from meshrun.fabric.settings import NotSupported

__all__ = ["Group", "NotSupported"]
