"""The actor API is typed: a type checker catches a misspelt argument to `send`."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_send_is_checked_against_the_actors_own_parameters(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from services.worker.actors.distill import distill\n"
        "distill.send(chunks=3, chunk_seconds=0.1)\n"
        "distill.send(chunkz=3)\n"
        "distill.send(chunks='three')\n")
    out, _, status = api.run([str(probe), "--no-error-summary", "--follow-imports=silent",
                              "--cache-dir", str(ROOT / ".mypy_cache")])
    errors = [line for line in out.splitlines() if "probe.py" in line and "error" in line]
    assert status == 1
    assert [e.split(":")[1] for e in errors] == ["3", "4"], out
    assert 'Unexpected keyword argument "chunkz"' in errors[0]
