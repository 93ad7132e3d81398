"""meshrun as a library: :class:`~meshrun.api.fleet.Fleet`, one object per set of hosts.

``meshrun.Fleet`` is what a program (and the ``meshrun`` command itself) uses to run a
command, a script, a pull or a task graph on hosts: it owns the connections for as long
as the ``with`` block lasts, takes the CLI's option values as Python values, and hands
back the reports the CLI renders. ``fleet.py`` is the object, ``values.py`` checks what
a program passes, ``failed.py`` is the error ``check=True`` raises, ``probes.py`` the
result of probing hosts. Nothing here is imported by ``import meshrun``: the package
loads on the first use of ``meshrun.Fleet``.
"""
