"""``vltool serve`` flag checks: bad values fail in one line before the model loads."""

import subprocess

import pytest

from tests.engine.train_runs import vltool_command


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-queue", "0"], "error: --max-queue 0: must be at least 1."),
        (["--port", "70000"], "error: --port 70000: must be at least 1 and at most 65535."),
        (["--max-request-mb", "0"], "error: --max-request-mb 0.0: must be at least 0.001."),
        (["--allowed-local-media-path", "/no/such/folder"], "error: --allowed-local-media-path /no/such/folder: not a"),
    ],
)
def test_bad_flags_fail_in_one_line(chat_model, flags, message):
    result = subprocess.run(
        vltool_command("serve", str(chat_model), *flags), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in result.stderr
