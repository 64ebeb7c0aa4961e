"""Specs: what a task sends besides its URL, said once per job and named by a key.

The checks both sides share, the broker's part (a spec taken once, named in every
lease, handed to workers, kept across a crash and a compaction), and the targets
files a dispatcher reads.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from brokerkit import Factory, crash

from fetchq.commands.specs import Targets, command_spec
from fetchq.errors import BadRequest, NoSuchJob, UsageError
from fetchq.fetch.specbook import SpecBook, unsendable
from fetchq.urls import Rejected
from fetchq.wire.specs import MAX_BODY, MAX_JOB_SPECS, Spec, read_spec, spec_key, spec_record

POST = Spec("POST", (("Content-Type", "application/json"), ("Authorization", "Bearer t0k")), b"{}")


# -- the rules both sides share ------------------------------------------------


def test_a_spec_record_reads_back_as_the_same_spec_under_its_key():
    record = spec_record(POST)
    assert read_spec(record) == (spec_key(POST), POST)
    assert base64.b64decode(record["body"]) == b"{}"
    assert spec_key(POST) != spec_key(POST._replace(body=b"{ }"))
    assert spec_key(POST) != spec_key(POST._replace(method="PUT"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"key": "0" * 32}, "not the digest"),
        ({"body": "not base64!"}, "not base64"),
        ({"method": "BREW"}, "is not one of"),
        ({"headers": [["X-A", "one\r\nX-Injected: yes"]]}, "line break"),
        ({"headers": [["Bad Name", "v"]]}, "not a header name"),
        ({"headers": [["Content-Length", "5"]]}, "the worker's to send"),
        ({"headers": [["connection", "close"]]}, "the worker's to send"),
        ({"headers": [["X-A"]]}, "[name, value]"),
    ],
)
def test_a_spec_record_that_breaks_a_rule_is_refused(change: dict[str, Any], reason: str):
    record = {**spec_record(POST), **change}
    if "key" not in change:  # a record whose key fits what it holds: only the rule fails
        record["key"] = "0" * 32
    with pytest.raises(ValueError, match="|".join([reason]).replace("[", r"\[")):
        read_spec(record)


def test_no_message_about_a_header_quotes_its_value():
    with pytest.raises(UsageError) as caught:
        command_spec("POST", ["Authorization: s3cret\x01"], [], None)
    assert "s3cret" not in str(caught.value)
    assert "Authorization" in str(caught.value)


def test_a_get_sends_no_body_and_a_body_over_the_limit_is_refused(tmp_path: Path):
    with pytest.raises(UsageError, match="GET sends no body"):
        command_spec(None, [], [], "text")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_BODY + 1))
    with pytest.raises(UsageError, match=f"limit of {MAX_BODY} bytes"):
        command_spec("PUT", [], [], f"@{big}")
    assert command_spec("put", [], [], "text").body == b"text"


def test_header_env_takes_the_value_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("API_TOKEN", "Bearer abc")
    spec = command_spec("GET", ["Accept: a/b"], ["Authorization: API_TOKEN"], None)
    assert spec.headers == (("Accept", "a/b"), ("Authorization", "Bearer abc"))
    with pytest.raises(UsageError, match="environment variable NOT_SET is not set"):
        command_spec("GET", [], ["Authorization: NOT_SET"], None)


# -- the broker ------------------------------------------------------------------


def submit(broker: Any, urls: list[str], spec: Spec | None, *, bring: bool = True) -> Any:
    batch: dict[str, Any] = {"job": "s", "urls": urls}
    if spec is not None:
        batch["spec"] = spec_key(spec)
        if bring:
            batch["specs"] = [spec_record(spec)]
    return broker.submit(batch)


def test_each_task_names_its_spec_and_a_worker_gets_the_spec_by_its_key(
    implementation: Factory,
):
    broker = implementation()
    submit(broker, ["http://127.0.0.1/a"], POST)
    submit(broker, ["http://127.0.0.1/b"], POST, bring=False)  # sent once: named after
    submit(broker, ["http://127.0.0.1/c"], None)
    leased = {task["url"][-1]: task for task in broker.lease("w", 10, 0)}
    assert leased["a"]["spec"] == leased["b"]["spec"] == spec_key(POST)
    assert "spec" not in leased["c"]
    assert broker.specs("s", [spec_key(POST), "f" * 32]) == [spec_record(POST)]


def test_a_batch_naming_a_spec_nobody_sent_is_refused_and_changes_nothing(
    implementation: Factory,
):
    broker = implementation()
    with pytest.raises(BadRequest, match="has no spec"):
        submit(broker, ["http://127.0.0.1/a"], POST, bring=False)
    with pytest.raises(BadRequest, match="not the digest"):
        broker.submit({"job": "s", "urls": [], "specs": [{**spec_record(POST), "body": ""}]})
    assert broker.queued() == 0


def test_a_job_holds_a_bounded_number_of_specs(implementation: Factory):
    broker = implementation()
    specs = [Spec("POST", (), str(n).encode()) for n in range(MAX_JOB_SPECS + 1)]
    for start in range(0, MAX_JOB_SPECS, 25):
        part = specs[start : start + 25]
        broker.submit({"job": "s", "urls": [], "specs": [spec_record(s) for s in part]})
    with pytest.raises(BadRequest, match=f"more than {MAX_JOB_SPECS}"):
        submit(broker, ["http://127.0.0.1/a"], specs[-1])


def test_specs_survive_a_crash_and_a_compaction(implementation: Factory, tmp_path: Path):
    path = tmp_path / "fetchq.journal"
    broker = implementation(durable=path)
    submit(broker, ["http://127.0.0.1/a", "http://127.0.0.1/b"], POST)
    crash(broker)
    restarted = implementation(durable=path)  # replays the log
    restarted.compact()
    crash(restarted)
    again = implementation(durable=path)  # reads the snapshot
    leased = again.lease("w", 10, 0)
    assert [task["spec"] for task in leased] == [spec_key(POST)] * 2
    assert again.specs("s", [spec_key(POST)]) == [spec_record(POST)]
    again.close()


# -- targets files -----------------------------------------------------------------


def read_targets(text: str, tmp_path: Path, form: str = "http") -> list[Any]:
    path = tmp_path / "targets.txt"
    return list(Targets(str(path), io.BytesIO(text.encode()), form=form))


def test_vegeta_text_targets_are_blocks_with_headers_and_a_body_file(tmp_path: Path):
    (tmp_path / "bodies").mkdir()
    (tmp_path / "bodies" / "new.json").write_bytes(b'{"new": 1}')
    text = (
        "# a comment\n"
        "GET http://127.0.0.1/a\n"
        "X-Account: 8675309\n"
        "\n\n"
        "DELETE http://127.0.0.1/b\n"
        "Authorization: Token X\n"
        "Confirmation: 1\n"
        "\n"
        "POST http://127.0.0.1/c\n"
        "Content-Type: application/json\n"
        "@bodies/new.json\n"
        "HEAD http://127.0.0.1/no-blank-line-needed\n"
        "\n"
        "PATCH http://127.0.0.1/d\n"
        "@bodies/new.json\n"
        "X-After-The-Body: no\n"
    )
    got = read_targets(text, tmp_path)
    assert got[0] == ("http://127.0.0.1/a", Spec("GET", (("X-Account", "8675309"),)))
    assert got[1] == (
        "http://127.0.0.1/b",
        Spec("DELETE", (("Authorization", "Token X"), ("Confirmation", "1"))),
    )
    assert got[2] == (
        "http://127.0.0.1/c",
        Spec("POST", (("Content-Type", "application/json"),), b'{"new": 1}'),
    )
    assert got[3] == ("http://127.0.0.1/no-blank-line-needed", Spec("HEAD"))
    assert got[4] == Rejected(str(tmp_path / "targets.txt"), 17, "a body (@file) ends its target")
    assert len(got) == 5


def test_a_malformed_block_is_skipped_with_its_file_and_line(tmp_path: Path):
    text = (
        "BREW http://127.0.0.1/pot\n\n"
        "GET notaurl\n\n"
        "GET http://127.0.0.1/h\nno colon here\n\n"
        "POST http://127.0.0.1/p\n@missing.json\n\n"
        "PUT http://127.0.0.1/fine\n"
    )
    got = read_targets(text, tmp_path)
    source = str(tmp_path / "targets.txt")
    assert [(r.line, r.source) for r in got[:4] if isinstance(r, Rejected)] == [
        (1, source),
        (3, source),
        (6, source),
        (9, source),
    ]
    assert "is not one of" in got[0].reason
    assert "not a 'Name: value' header" in got[2].reason
    assert "cannot read body file" in got[3].reason
    assert got[4] == ("http://127.0.0.1/fine", Spec("PUT"))


def test_vegeta_json_targets_one_a_line(tmp_path: Path):
    body = base64.b64encode(b"payload").decode()
    text = (
        '{"method": "POST", "url": "http://127.0.0.1/j", '
        f'"header": {{"X-A": ["1", "2"]}}, "body": "{body}"}}\n'
        "\n"
        '{"url": "http://127.0.0.1/g"}\n'
        "not json\n"
    )
    got = read_targets(text, tmp_path, "json")
    assert got[0] == ("http://127.0.0.1/j", Spec("POST", (("X-A", "1"), ("X-A", "2")), b"payload"))
    assert got[1] == ("http://127.0.0.1/g", Spec("GET"))
    assert isinstance(got[2], Rejected) and got[2].line == 4


def test_blocks_that_send_the_same_spec_share_one(tmp_path: Path):
    got = read_targets("PUT http://127.0.0.1/1\nA: b\n\nPUT http://127.0.0.1/2\nA: b\n", tmp_path)
    assert got[0][1] is got[1][1]


# -- a worker's specs ------------------------------------------------------------------


def test_a_worker_asks_for_each_spec_once_and_fails_a_task_whose_spec_is_gone():
    asked: list[tuple[str, list[str]]] = []

    def ask(job: str, keys: list[str]) -> list[dict[str, Any]]:
        asked.append((job, keys))
        if job == "forgotten":
            raise NoSuchJob(job)
        return [spec_record(POST)] if spec_key(POST) in keys else []

    book = SpecBook(ask)
    key = spec_key(POST)
    first = [{"id": n, "job": "s", "url": "http://h/", "spec": key} for n in range(3)]
    assert book.fill(first) == []
    assert {task["spec"].method for task in first} == {"POST"}
    assert first[0]["spec"].headers["Authorization"] == "Bearer t0k"
    again = [{"id": 9, "job": "s", "url": "http://h/", "spec": key}, {"id": 10, "job": "s"}]
    assert book.fill(again) == []
    assert asked == [("s", [key])], "a spec met is kept"
    gone = {"id": 11, "job": "s", "url": "http://h/", "spec": "e" * 32}
    forgotten = {"id": 12, "job": "forgotten", "url": "http://h/", "spec": "d" * 32}
    assert book.fill([gone, forgotten]) == [gone, forgotten]
    assert unsendable(gone, "w")["error"]["type"] == "spec"
    assert unsendable(gone, "w")["ok"] is False
