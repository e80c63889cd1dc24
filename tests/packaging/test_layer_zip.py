"""The layer zips: layout, executable mode, determinism (make_layer_zip.py), and the real
artifacts in dist/ (static binaries of the right architecture)."""

import hashlib
import importlib.util
import stat
import subprocess
import zipfile

import pytest

from conftest import ARCHES, ROOT

SCRIPTS = ROOT / "scripts" / "package"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_layer_zip = load("make_layer_zip")
elfcheck = load("elfcheck")


def assert_layer_layout(zip_path):
    with zipfile.ZipFile(zip_path) as z:
        assert z.testzip() is None
        infos = {i.filename: i for i in z.infolist()}
        assert sorted(infos) == ["extensions/", "extensions/lambda-sidecar"]
        ext = infos["extensions/lambda-sidecar"]
        mode = ext.external_attr >> 16
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o755, oct(mode)
        assert ext.create_system == 3
        return z.read(ext)


def test_zip_layout_mode_and_zipinfo(tmp_path):
    binary = tmp_path / "lambda-sidecar"
    binary.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    out = tmp_path / "layer.zip"
    make_layer_zip.write_layer_zip(str(binary), str(out))
    assert assert_layer_layout(out) == binary.read_bytes()
    # What Info-ZIP's unzip (and so Lambda's unpacking) reads: the Unix mode column.
    listing = subprocess.run(["zipinfo", str(out)], capture_output=True, text=True, check=True).stdout
    line = next(l for l in listing.splitlines() if l.endswith("extensions/lambda-sidecar"))
    assert line.startswith("-rwxr-xr-x"), line


def test_same_binary_gives_the_same_zip(tmp_path):
    binary = tmp_path / "bin"
    binary.write_bytes(b"some bytes" * 1000)
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    make_layer_zip.write_layer_zip(str(binary), str(a))
    binary.touch()  # a new mtime must not change the zip
    make_layer_zip.write_layer_zip(str(binary), str(b))
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_elfcheck_refuses_a_dynamic_or_foreign_binary(tmp_path):
    with pytest.raises(elfcheck.ElfError, match="dynamically linked"):
        elfcheck.check("/bin/sh", "x86_64")
    with pytest.raises(elfcheck.ElfError, match="e_machine"):
        elfcheck.check("/bin/sh", "arm64")
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(elfcheck.ElfError, match="not an ELF"):
        elfcheck.check(str(junk), "x86_64")


@pytest.mark.parametrize("arch", ARCHES)
def test_dist_layer_holds_a_static_binary_for_its_arch(arch, tmp_path):
    zip_path = ROOT / "dist" / f"lambda-sidecar-{arch}.zip"
    assert zip_path.exists(), f"{zip_path} missing: run make layer-{arch}"
    data = assert_layer_layout(zip_path)
    binary = tmp_path / "lambda-sidecar"
    binary.write_bytes(data)
    elfcheck.check(str(binary), arch)
    # Under 50 MB unzipped everything must fit with the function in Lambda's 250 MB; a
    # sidecar should be far below that.
    assert len(data) < 50 * 1024 * 1024
