"""Bad input never runs and never clobbers: each gives one ``kvbench: error:`` line on
stderr, exit 2 and writes nothing (issue 12); --force overwrites; SIGTERM exits 143."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvbench.cli import main
from kvbench.results import load

FAST = ["--quick", "--no-progress", "-q"]
#: a --cases regex no case matches: should a bad value ever slip through validation, the
#: run still stops (with another message, failing the test) instead of running a suite
GUARD = ["--cases", "^no-such-case$"]


def one_line_error(capsys, argv, msg):
    """Run the CLI in-process; assert exit 2, exactly one stderr line naming ``msg``."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("kvbench: error: "), err
    assert msg in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args,msg", [
    (["--bench", "roundtrip", "--set", "roundtrip.pages=0"], "roundtrip.pages=0: must be positive"),
    (["--bench", "roundtrip", "--set", "roundtrip.pages=-1"], "roundtrip.pages=-1: must be positive"),
    (["--bench", "roundtrip", "--set", "roundtrip.pages=many"], "not an integer"),
    (["--bench", "roundtrip", "--set", "roundtrip.pages=10000000000000"], "host memory"),
    (["--bench", "transfer", "--set", "transfer.file_bytes=0"], "transfer.file_bytes=0: size must be positive"),
    (["--bench", "transfer", "--set", "transfer.file_bytes=-4KiB"], "size must be positive"),
    (["--bench", "transfer", "--set", "transfer.file_bytes=1PiB"], "is more than host memory can hold"),
    (["--bench", "transfer", "--set", "transfer.file_bytes=1000TB"], "can hold"),
    (["--bench", "transfer", "--set", "transfer.bytes=0"], "transfer.bytes=0"),
    (["--bench", "transfer", "--set", "transfer.bytes=1000TB"], "more than host memory can hold"),
    (["--bench", "transfer", "--set", "transfer.ceiling_bytes=0"], "transfer.ceiling_bytes=0"),
    (["--bench", "transfer", "--set", "transfer.ceiling_bytes=1000TB"], "host memory"),
    (["--bench", "transfer", "--set", "transfer.queue_depths="], "no values given"),
    (["--bench", "prefix", "--set", "prefix.threads=0"], "prefix.threads=0: must be positive"),
    (["--bench", "prefix", "--set", "prefix.chunk_bytes=0"], "prefix.chunk_bytes=0"),
    (["--bench", "prefix", "--set", "prefix.chunk_bytes=1000TB"], "host memory"),
    (["--bench", "prefix", "--set", "prefix.sources="], "no sources given"),
    (["--bench", "decode", "--set", "decode.hot_window=0"], "decode.hot_window=0: must be positive"),
    (["--bench", "decode", "--set", "decode.nvme.threads=-2"], "must be positive"),
    (["--bench", "accuracy", "--set", "accuracy.tokens=1"], "must be at least 2"),
    (["--bench", "accuracy", "--set", "accuracy.sources=,"], "no sources given"),
    (["--bench", "accuracy", "--set", "accuracy.speed=2"], "expected 0 or 1"),
    (["--bench", ""], "--bench is empty"),
    (["--bench", ","], "--bench is empty"),
    (["--format", ""], "--format is empty"),
    (["--layout", ""], "--layout is empty"),
    (["--cases", ""], "--cases is empty"),
])
def test_bad_run_input_is_one_line_exit_2_and_writes_nothing(args, msg, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    nv = tmp_path / "nv"
    nv.mkdir()
    one_line_error(capsys, ["run", *FAST, *GUARD, "--nvme-dir", str(nv), "-o", "r.json", *args], msg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nv"] and not any(nv.iterdir())


def _run(tmp_path, *extra):
    return main(["run", *FAST, "--bench", "roundtrip", "--layout", "layer", "--set", "roundtrip.pages=2",
                 "--nvme-dir", str(tmp_path), *extra])


def test_existing_output_is_refused_without_force(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("precious")
    one_line_error(capsys, ["run", *FAST, "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
                            "-o", str(out)], "exists; give --force to overwrite it")
    assert out.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_force_overwrites(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("old")
    assert _run(tmp_path, "-o", str(out), "--force") == 0
    assert load(out)["run"]["status"] == "complete"


def test_output_that_is_a_directory(tmp_path, capsys):
    one_line_error(capsys, ["run", *FAST, "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
                            "-o", str(tmp_path), "--force"], "is a directory")


def test_output_into_missing_folder(tmp_path, capsys):
    one_line_error(capsys, ["run", *FAST, "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
                            "-o", str(tmp_path / "nope" / "r.json")], "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    one_line_error(capsys, ["run", *FAST, "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
                            "-o", str(tmp_path / "f" / "r.json")], "is not a directory")


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder nobody can create files in: mode 0555 for a normal user; for root (whom
    modes do not stop) the immutable attribute, where chattr works here."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is unavailable here: no folder root cannot write")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def test_output_into_unwritable_folder(unwritable_dir, tmp_path, capsys):
    one_line_error(capsys, ["run", *FAST, "--bench", "roundtrip", "--nvme-dir", str(tmp_path),
                            "-o", str(unwritable_dir / "r.json")], "cannot write in")
    assert list(unwritable_dir.iterdir()) == []


def test_size_json_into_unwritable_folder(unwritable_dir, capsys):
    one_line_error(capsys, ["size", "--scenario", "llama-3.1-70b-fp8-chat",
                            "--json", str(unwritable_dir / "s.json")], "--json")
    assert list(unwritable_dir.iterdir()) == []


def test_report_html_into_unwritable_folder(unwritable_dir, tmp_path, capsys):
    r = tmp_path / "r.json"
    assert _run(tmp_path, "-o", str(r)) == 0
    capsys.readouterr()
    one_line_error(capsys, ["report", str(r), "--html", str(unwritable_dir / "r.html")], "cannot write in")


@pytest.mark.parametrize("cmd", ["report", "compare"])
def test_unreadable_result_is_one_line(cmd, tmp_path, monkeypatch, capsys):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({}))
    if os.geteuid() != 0:
        f.chmod(0)
    else:  # root reads any mode: make reading this one file fail as it would for a user
        real = Path.read_text

        def read_text(self, *a, **k):
            if self == f:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *a, **k)
        monkeypatch.setattr(Path, "read_text", read_text)
    args = [str(f)] if cmd == "report" else [str(f), str(f)]
    one_line_error(capsys, [cmd, *args], "cannot read: Permission denied")
