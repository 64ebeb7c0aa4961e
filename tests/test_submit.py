"""The dispatcher's engine against a real server: batches, and what a progress display hears."""

from __future__ import annotations

from fetchq_procs import connect_broker

from fetchq.submit import Submitter


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
