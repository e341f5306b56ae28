"""Pure logic: kwargs validation, cancel event matching, settings, progress and text."""

from __future__ import annotations

from typing import Annotated

import pytest

from services.worker.actors.text import digest, generated_chunk, split_document
from services.worker.context import chunk_timeout
from services.worker.execution import Progress
from shared.cancellation import event_matches
from shared.pace import human, log_interval
from shared.params import KwargsError, Range, describe, validate
from shared.settings import Settings, SettingsError
from shared.token import Cancelled, CancelToken

pytestmark = pytest.mark.unit


def sample(ctx, text: str | None = None, n: Annotated[int, Range(1, 10)] = 3,
           rate: float = 0.5, tags: list | None = None, required: str = "x") -> None: ...


def needs(ctx, must: int) -> None: ...


def test_describe_and_validate_fill_defaults() -> None:
    spec = describe(sample)
    assert spec["n"] == {"min": 1, "max": 10, "types": ["integer"], "nullable": False,
                         "required": False, "default": 3}
    assert validate(spec, {"n": 5}) == {"text": None, "n": 5, "rate": 0.5, "tags": None,
                                        "required": "x"}


@pytest.mark.parametrize("kwargs, field", [
    ({"n": "5"}, "n"), ({"n": 0}, "n"), ({"n": 11}, "n"), ({"n": True}, "n"),
    ({"rate": float("nan")}, "rate"), ({"bogus": 1}, "bogus"), ({"text": 3}, "text"),
    ({"n": None}, "n"),
])
def test_validate_rejects_each_problem_by_name(kwargs, field) -> None:
    with pytest.raises(KwargsError) as err:
        validate(describe(sample), kwargs)
    assert field in err.value.problems


def test_validate_requires_required_and_an_object() -> None:
    with pytest.raises(KwargsError) as err:
        validate(describe(needs), {})
    assert err.value.problems == {"must": "required"}
    with pytest.raises(KwargsError):
        validate(describe(needs), [1])


def test_cancel_event_matching() -> None:
    mine = dict(task_id="a", actor="distill", queue="default", started_at=100.0)
    assert event_matches({"ids": ["a", "b"]}, **mine)
    assert not event_matches({"ids": ["b"]}, **mine)
    assert event_matches({"all": True, "before": 100.0}, **mine)
    # a task that started after the cancel-all committed is not covered by it
    assert not event_matches({"all": True, "before": 99.9}, **mine)
    assert event_matches({"all": True, "actor": "distill", "before": 200}, **mine)
    assert not event_matches({"all": True, "actor": "other", "before": 200}, **mine)
    assert not event_matches({"all": True, "queue": "slow", "before": 200}, **mine)
    assert not event_matches({"something": "else"}, **mine)


def test_settings_from_env_and_bad_values() -> None:
    s = Settings.from_env({"PORT": "9000", "CANCEL_GRACE": "0.5", "API_TOKEN": "t"})
    assert (s.port, s.cancel_grace, s.api_token) == (9000, 0.5, "t")
    with pytest.raises(SettingsError, match="PORT"):
        Settings.from_env({"PORT": "http"})
    with pytest.raises(SettingsError, match="HEARTBEAT_TIMEOUT"):
        Settings.from_env({"HEARTBEAT_TIMEOUT": "0"})


def test_token_is_a_flag_and_wakes_waiters() -> None:
    token = CancelToken()
    assert token.cancelled is False and token.wait(0.01) is False
    assert token.cancel("user") is True and token.cancel("again") is False
    assert token.wait(10) is True and token.reason == "user"
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()


def test_progress_eta_uses_this_attempts_pace() -> None:
    p = Progress(done=60, failed=0, total=100)
    # 50 restored from the checkpoint, 10 done in 20 s: 40 left at 2 s each
    assert p.eta_seconds(20.0, skipped=50) == pytest.approx(80.0)
    assert Progress(total=10).eta_seconds(5.0) is None
    assert p.percent() == 60.0


def test_heartbeat_log_interval_by_job_size_and_override() -> None:
    s = Settings()
    assert [log_interval(n, s) for n in (10, 101, 501)] == [300.0, 600.0, 900.0]
    assert log_interval(10, s.with_(heartbeat_log_interval=2.0)) == 2.0
    assert (human(30), human(150), human(9000)) == ("30s", "2.5min", "2.5h")


def test_chunk_timeout_grows_with_size() -> None:
    assert chunk_timeout(0) == 10.0
    assert chunk_timeout(2000) == pytest.approx(50.0)
    assert chunk_timeout(10**9) == 3600.0


def test_document_split_and_digest() -> None:
    text = " ".join(f"Sentence number {i} talks about cancel tokens." for i in range(40))
    chunks = split_document(text, 200)
    assert len(chunks) > 5 and all(len(c) <= 400 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    d = digest(chunks[0])
    assert "cancel" in d["top_terms"] and d["extract"].startswith("Sentence number 0")
    assert generated_chunk(7) == generated_chunk(7) != generated_chunk(8)
