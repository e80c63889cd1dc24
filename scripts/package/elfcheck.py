#!/usr/bin/env python3
"""Checks that a file is a static ELF executable for a given Lambda architecture.

Usage: elfcheck.py BINARY arm64|x86_64

A layer's extension runs on every runtime's OS image (Amazon Linux 2023, the slim
provided.al2023 image, ...), so it must not depend on a dynamic loader or a libc there.
"No PT_INTERP program header" is exactly what the kernel needs to run it without
ld.so; reading the header ourselves avoids depending on `file`'s wording.
"""

import struct
import sys

# e_machine values from the ELF specification.
MACHINES = {"arm64": 183, "x86_64": 62}
PT_INTERP = 3


class ElfError(Exception):
    pass


def inspect(path):
    """Returns (e_machine, has_interpreter) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        if header[4] != 2 or header[5] != 1:
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        (machine,) = struct.unpack_from("<H", header, 18)
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        has_interp = False
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack("<I", f.read(4))
            has_interp = has_interp or p_type == PT_INTERP
        return machine, has_interp


def check(path, arch):
    machine, has_interp = inspect(path)
    if machine != MACHINES[arch]:
        raise ElfError(f"{path}: e_machine {machine}, expected {MACHINES[arch]} for {arch}")
    if has_interp:
        raise ElfError(f"{path}: dynamically linked (has PT_INTERP); a layer needs a static binary")


def main(argv):
    if len(argv) != 3 or argv[2] not in MACHINES:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        check(argv[1], argv[2])
    except (OSError, ElfError) as e:
        print(f"elfcheck: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
