"""What probing hosts found (``meshrun hosts``, :meth:`meshrun.Fleet.probe`).

The same shape as the other results: ``succeeded``/``failed`` and the exit code the
``hosts`` command exits with.
"""

from __future__ import annotations

from meshrun.errors import ExitCode
from meshrun.fleet.probe import HostProbe
from meshrun.records import record


@record
class ProbeReport:
    """Every host's probe, in inventory order."""

    probes: tuple[HostProbe, ...]

    @property
    def succeeded(self) -> tuple[HostProbe, ...]:
        """Hosts that answered and let us log in."""
        return tuple(p for p in self.probes if p.reachable and p.auth_ok)

    @property
    def failed(self) -> tuple[HostProbe, ...]:
        """Hosts unreachable, refusing the login, or not probed (``shortage``: this
        process ran out of descriptors or threads; says nothing of the host)."""
        return tuple(p for p in self.probes if not (p.reachable and p.auth_ok))

    @property
    def exit_code(self) -> int:
        """3 when a host is unreachable or refuses the login, else 1 when some host
        could not be probed for want of resources here, else 0."""
        if any(not p.shortage for p in self.failed):
            return ExitCode.CONNECT
        return ExitCode.FAILED if self.failed else ExitCode.OK
