"""faultd's Python client, as its README shows it: ``faultd.Client(ADDR)`` (TCP or the
socket), a refuse fault as a context manager: the port refuses while it is in force and
accepts after. Usage: py_client.py ADDR PORT"""

import sys

import faultd

from common import PERMISSION_DENIED, check, refused

addr, port = sys.argv[1], int(sys.argv[2])
check(not refused(port), "refused before any fault")
try:
    with faultd.Client(addr) as client:
        with client.refuse(port) as fault:
            check(refused(port), "the fault does not refuse connections")
            owners = [f.proto.owner.uid for f in client.list() if f.id == fault.id]
            check(owners == [0], f"listed with owner root: {owners}")
        check(not refused(port), "still refused after the with block")
except faultd.PermissionDenied as e:
    print(e, file=sys.stderr)
    sys.exit(PERMISSION_DENIED)
print("ok")
