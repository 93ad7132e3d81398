"""The tools meshrun is compared with, one module each.

``parallel_ssh.py`` and ``fabric_client.py`` are scripts the benchmarks run as child
processes (``python FILE MODE SPEC_JSON``) and time as a whole, start-up and imports
included, as a user would run them; each mode is one benchmark's workload, so every
benchmark that uses a tool runs the same file. A script imports only what its mode
needs, and only the standard library and the tool itself. ``gnu_parallel.py`` and
``rsync_ssh.py`` build those tools' command lines; ``fabric_client.connection`` is also
what ``bench/pull.py`` uses in process.

Named after the tool, never as the tool's own package (``fabric``, ``pssh``): a script's
directory comes first on its ``sys.path``.
"""
