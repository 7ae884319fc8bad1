"""Cloud provider emulators: small HTTP servers that speak each provider's real wire format.

Each emulator backs its instances with real sshd hosts (`tests/sshhost.py`) on loopback, so a
platform module driven through the official SDK ends up with a host it can really ssh to.
"""
