"""The measurement contract: bad memories and bad queries end with one line and no traceback.

Two cases run the installed .venv/bin/m3-ros as a process; the others call the same ``main``
in this process (an uncaught exception would fail the test just as a traceback would), which
saves an interpreter and torch start per case on a 2-core machine.
"""
import json
import shutil
import subprocess

import pytest

from conftest import m3
from m3_ros.cli.main import main


def one_line_error(res) -> str:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("m3-ros: error: "), res.stderr
    return lines[0]


@pytest.fixture
def run(capsys):
    """m3-ros in this process -> CompletedProcess-like (returncode, stdout, stderr)."""
    def call(*args: str, check: bool = False):
        rc = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out.out, out.err)
    return call


@pytest.fixture
def copy(built_memory, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(built_memory, dst)
    return dst


def test_not_a_memory_and_empty_query_as_processes(tmp_path, built_memory):
    (tmp_path / "notes.txt").write_text("hello")
    assert "is not a memory directory" in one_line_error(m3("query", str(tmp_path), "duck", check=False))
    assert "query is empty" in one_line_error(m3("query", str(built_memory), "", "--json", check=False))


@pytest.mark.parametrize("command", ["query", "render"])
def test_truncated_tensor_file(copy, command, run):
    t = copy / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[:-1000])
    extra = {"query": ["duck"], "render": ["--pose", "0", "0", "0", "0", "0", "0", "1"], "info": []}[command]
    assert "corrupted or truncated" in one_line_error(run(command, str(copy), *extra, check=False))


def test_flipped_tensor_bytes_and_truncated_header(copy, run):
    t = copy / "tensors.safetensors"
    data = bytearray(t.read_bytes())
    data[len(data) // 2] ^= 0xFF  # safetensors would load this silently; the checksum does not
    t.write_bytes(bytes(data))
    assert "corrupted or truncated" in one_line_error(run("info", str(copy), check=False))
    meta = json.loads((copy / "meta.json").read_text())
    del meta["tensors_sha256"]  # without the checksum, safetensors itself refuses a cut header
    (copy / "meta.json").write_text(json.dumps(meta))
    t.write_bytes(bytes(data[:20]))
    assert "not a readable safetensors file" in one_line_error(run("info", str(copy), check=False))


def test_wrong_version(copy, run):
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps(dict(meta, format_version=7)))
    assert "format_version 7 is not supported" in one_line_error(run("query", str(copy), "duck", check=False))
    (copy / "meta.json").write_text("{half a json")
    assert "not valid JSON" in one_line_error(run("info", str(copy), check=False))


@pytest.mark.parametrize("query, why", [("   ", "query is empty"), ("duck " * 103, "at most 512")])
def test_bad_queries(built_memory, query, why, run):
    assert why in one_line_error(run("query", str(built_memory), query, "--json", check=False))
