"""Locust users for the worker-rate comparison: GET the target with no wait at all.

``python -m locust -f bench/locustfile.py Requests`` runs ``HttpUser`` (the
``requests`` library under gevent, like fetchq's own HTTP client);
``Fast`` runs ``FastHttpUser`` (geventhttpclient).
"""

from __future__ import annotations

from locust import HttpUser, constant, task
from locust.contrib.fasthttp import FastHttpUser


class Requests(HttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/")


class Fast(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/")
