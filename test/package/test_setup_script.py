"""scripts/setup.sh: a failing step ends with one clear line naming the step (no bare traceback)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_failing_step_is_named_in_one_line(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    # a pin that no index can satisfy
    (tmp_path / "requirements.txt").write_text("m3-ros-no-such-package-anywhere==0.0.1\n")
    (tmp_path / "constraints.txt").write_text("")
    out = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    err_lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1, out.stderr
    assert err_lines[0].startswith("setup: step 'pip' failed"), err_lines[0]
    assert "m3-ros-no-such-package-anywhere" in err_lines[0]
    assert "Traceback" not in out.stdout + out.stderr
    assert (tmp_path / ".venv" / "setup-logs" / "pip.log").is_file()
