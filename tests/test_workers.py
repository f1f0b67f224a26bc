"""scripts/test.sh runs pytest with two xdist workers; tests/conftest.py's scheduler keeps each test file
whole on one worker and every integration test on the same one (they share the session's SLURM cluster
and MLflow server: two workers each starting and stopping them would pull the cluster from under the
other's jobs)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = """
import json, os
from pathlib import Path

def record(name):
    with open(Path(__file__).parents[{up}] / "workers.jsonl", "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
"""


def test_a_file_stays_on_one_worker_and_the_integration_tests_share_one(tmp_path):
    (tmp_path / "tests" / "integration").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    files = {"tests/integration/test_cluster.py": 2, "tests/integration/test_server.py": 2,
             "tests/integration/test_ui.py": 2, "tests/test_a.py": 3, "tests/test_b.py": 3, "tests/test_c.py": 3}
    for name, count in files.items():
        up = name.count("/")
        body = RECORD.format(up=up) + "".join(
            f"\ndef test_{i}():\n    import time; time.sleep(0.2); record({name!r})\n" for i in range(count))
        (tmp_path / name).write_text(body)
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-q", "-p", "no:cacheprovider"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    seen: dict[str, set[str]] = {}
    for line in (tmp_path / "workers.jsonl").read_text().splitlines():
        name, worker = json.loads(line)
        seen.setdefault(name, set()).add(worker)
    assert sorted(seen) == sorted(files) and all(len(w) == 1 for w in seen.values()), seen
    integration = {w for name, ws in seen.items() if "/integration/" in name for w in ws}
    assert len(integration) == 1, seen
    assert len({w for ws in seen.values() for w in ws}) == 2, f"one worker ran everything: {seen}"
