"""Verifies tokens through a JWKS with PyJWT, for the Rust tests that cannot: tests/key_sources.rs.

Reads {"alg", "tokens": [...], "jwks": {...}} (or "secret" for HS*) on stdin. Each token is
verified with the algorithm pinned, the key chosen by the header's kid from the JWKS as a relying
party would, and exp checked. Prints "ok N" and exits 0, or names the first failure and exits 1.
"""

import json
import sys

import jwt


def main() -> int:
    job = json.load(sys.stdin)
    alg = job["alg"]
    keys = jwt.PyJWKSet.from_dict(job["jwks"]) if "jwks" in job else None
    for token in job["tokens"]:
        kid = jwt.get_unverified_header(token).get("kid")
        if keys is None:
            key = job["secret"].encode()
        else:
            matches = [k for k in keys.keys if k.key_id == kid]
            if not matches:
                print(f"no key with kid {kid} in the JWKS")
                return 1
            key = matches[0].key
        try:
            jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False})
        except jwt.PyJWTError as e:
            print(f"token with kid {kid}: {type(e).__name__}: {e}")
            return 1
    print(f"ok {len(job['tokens'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
