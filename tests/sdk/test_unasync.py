"""scripts/unasync.py: the committed blocking SDK is exactly what the generator makes of the async
source, and ``--check`` (run by ``make lint``) fails on a stale copy."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync.py"
GENERATED = ["tidebase/_client.py", "tidebase/_context.py"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unasync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_committed_sync_files_equal_the_generator_output(tmp_path: Path) -> None:
    done = unasync("--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for target in GENERATED:
        generated = (tmp_path / target).read_text()
        assert generated.startswith(
            f"# generated from {target.replace('tidebase/_', 'tidebase/_async_')} by scripts/unasync.py; do not edit"
        )
        assert (ROOT / target).read_text() == generated, f"{target} is stale: run `make sdk-sync`"


def test_check_fails_when_a_generated_file_is_stale(tmp_path: Path) -> None:
    for source in load_script().PAIRS:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, tmp_path / source)
    assert unasync("--root", str(tmp_path)).returncode == 0  # writes the sync files there
    assert unasync("--root", str(tmp_path), "--check").returncode == 0

    client = tmp_path / "tidebase/_client.py"
    client.write_text(client.read_text().replace("time.monotonic()", "time.time()", 1))  # a hand edit
    done = unasync("--root", str(tmp_path), "--check")
    assert done.returncode == 1
    assert "stale: tidebase/_client.py" in done.stdout
    assert "-            started = time.time()" in done.stdout  # the diff shows the hand edit

    source = tmp_path / "tidebase/_async_context.py"
    source.write_text(source.read_text().replace('"""Renew the lease once', '"""Renew the run lease once'))
    done = unasync("--root", str(tmp_path), "--check")  # the async source changed, the copy did not
    assert done.returncode == 1
    assert "tidebase/_context.py" in done.stdout.splitlines()[-1]


def test_rewrite_drops_async_keeps_prose_and_renames() -> None:
    script = load_script()
    source = '''\
async def get(self) -> AsyncIterator[int]:
    """Wait for it: await the answer, then aclose ``AsyncTidebase`` (``tidebase.aio``)."""
    # _async_client.py stays the source's name in prose
    async with self._http.stream() as response:
        async for line in response.aiter_lines():
            yield (await self.runs.get(line))["run"]
    total = (await self.count()) + 1
    await self._lean.aclose()
    return f(await x)
'''
    assert (
        script.rewrite(source, "x.py")
        == '''\
def get(self) -> Iterator[int]:
    """Wait for it: await the answer, then close ``Tidebase`` (``tidebase``)."""
    # _async_client.py stays the source's name in prose
    with self._http.stream() as response:
        for line in response.iter_lines():
            yield self.runs.get(line)["run"]
    total = self.count() + 1
    self._lean.close()
    return f(x)
'''
    )


def test_async_only_blocks_are_left_out() -> None:
    script = load_script()
    source = "a = 1\n# unasync: async-only begin\nb = 2\n# unasync: async-only end\nc = 3\n"
    assert script.drop_async_only(source, "x.py") == "a = 1\nc = 3\n"
    with pytest.raises(SystemExit, match="never ended"):
        script.drop_async_only("# unasync: async-only begin\n", "x.py")


def test_an_unmapped_async_name_is_an_error() -> None:
    script = load_script()
    text = script.rewrite("async def f() -> None:\n    await AsyncThing().go()\n", "x.py")
    with pytest.raises(SystemExit, match="'AsyncThing' survived the rewrite"):
        script.check_names(text, "x.py")
