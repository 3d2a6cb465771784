"""Run kosoku (the Autobahn TestSuite driver, PyPI kosoku==0.1.0) with its arguments, after
fixing one fault of its own in the permessage-deflate cases 12.* and 13.*.

Those cases hash every echoed message with `hashlib.sha1` to compare it with what was sent,
and expect it as bytes. The driver sometimes hands a text message to them as `str` (seen on the
first case of each subgroup, 12.1.1, 13.1.1, ...), its bytes mapped one to one onto
characters (the Python 2 habit of the vendored cases, as the driver's own binascii shim
assumes), and the case then dies inside the driver ("Strings must be encoded before hashing")
whatever the server sent. Here such a `str` is turned back into the bytes that arrived
(Latin-1 maps each character to its byte) before the case sees it; the case's own checks
(message type, length in characters after UTF-8 decoding, SHA-1 of the content) are unchanged.

Usage: kosoku_run.py KOSOKU_ARGS...   (run with the Python that has kosoku installed)
"""

import sys

from kosoku._cli import main
from kosoku.cases import CASES


def as_bytes(on_message):
    def on_message_bytes(self, msg, binary):
        if isinstance(msg, str):
            msg = msg.encode("latin-1")
        return on_message(self, msg, binary)

    return on_message_bytes


cases = [c for case_id, c in CASES.items() if case_id.startswith(("12.", "13."))]
if not cases:
    sys.exit("kosoku_run.py: no case 12.* or 13.* found (kosoku version changed?)")
for case in cases:
    case.onMessage = as_bytes(case.onMessage)

if __name__ == "__main__":
    sys.argv[0] = "kosoku"
    sys.exit(main())
