"""Prints "refused" when a new connection to 127.0.0.1:PORT is refused while a listener is
there, else "accepted". Usage: probe.py PORT"""

import sys

from common import refused

print("refused" if refused(int(sys.argv[1])) else "accepted")
