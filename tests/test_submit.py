"""The dispatcher's engine against a real server: batches, and what a progress display hears."""

from __future__ import annotations

from fetchq_procs import connect_broker

from fetchq.commands.submit import Submitter


def test_progress_hears_of_each_accepted_batch_once(server, env):
    """A display moves once a batch (about 10,000 URLs by default), never once a URL."""
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    heard: list[int] = []
    submitter = Submitter(client, "progress", batch_size=1000, on_accepted=heard.append)
    for i in range(4500):
        submitter.add(f"http://127.0.0.1/?i={i}")
    submitter.finish()
    assert heard == [1000, 2000, 3000, 4000, 4500]
    assert client.call("job", "progress")["submitted"] == 4500
    client.close()


def test_urls_added_many_at_a_time_make_the_same_batches(server, env):
    """add_many cuts batches where add would: at batch_size, and by size for long URLs."""
    client = connect_broker(env["FETCHQ_SERVER"], env["FETCHQ_AUTHKEY"])
    heard: list[int] = []
    submitter = Submitter(client, "many", batch_size=1000, on_accepted=heard.append)
    submitter.add_many([f"http://127.0.0.1/?i={i}" for i in range(1700)])
    submitter.add_many([f"http://127.0.0.1/?j={i}" for i in range(2800)])
    submitter.finish()
    assert heard == [1000, 2000, 3000, 4000, 4500]
    long_urls = Submitter(client, "long", on_accepted=(sizes := []).append)
    long_urls.add_many(["http://127.0.0.1/" + "x" * 8000] * 2000)  # 16 MB: two batches
    long_urls.finish()
    assert len(sizes) == 2 and sizes[-1] == 2000
    assert client.call("job", "many")["submitted"] == 4500
    client.close()
