"""Test helpers: a simulated fleet of real OpenSSH servers on loopback."""
