#!/usr/bin/env python3
"""Writes a Lambda layer zip holding one extension: extensions/<name>, mode 0755.

Usage: make_layer_zip.py BINARY OUT.zip [NAME]

Lambda unpacks a layer into /opt and starts every executable file in /opt/extensions;
the file name is the name the extension must register with (Lambda-Extension-Name),
so it is `lambda-sidecar`. The executable bit lives in the zip entry's Unix mode
(external_attr); Lambda honours it, and a zip written without it gives an extension that
Lambda silently never starts. Entries get a fixed timestamp and fixed order, so the same
binary always gives the same zip (same hash: sam deploy then skips the upload and
CloudFormation keeps the layer version).
"""

import os
import stat
import sys
import zipfile

# 1980-01-01, the earliest time a zip entry can hold (as SOURCE_DATE_EPOCH tools use).
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
DIR_MODE = stat.S_IFDIR | 0o755
FILE_MODE = stat.S_IFREG | 0o755


def _entry(name, mode):
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.create_system = 3  # Unix, so external_attr's high half is read as st_mode
    info.external_attr = mode << 16
    return info


def write_layer_zip(binary, out, name="lambda-sidecar"):
    with open(binary, "rb") as f:
        data = f.read()
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w") as z:
        d = _entry("extensions/", DIR_MODE)
        d.external_attr |= 0x10  # MS-DOS directory flag
        z.writestr(d, b"")
        f = _entry(f"extensions/{name}", FILE_MODE)
        f.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(f, data, compresslevel=9)
    os.replace(tmp, out)


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    write_layer_zip(*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
