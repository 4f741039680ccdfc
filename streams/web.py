"""Interactive queries and health on Faust's web server (127.0.0.1 unless configured).

Depends on the services and the Faust app it serves on, never on the worker that wires them.
"""
from __future__ import annotations

import functools
from typing import Awaitable, Callable

from streams.kafka.flow import flow_report, label, partition_report
from streams.services import Services
from streams.state import UserState


def retry_later(web, reason: str):
    return web.json({"error": reason, "retry": True}, status=503, headers={"Retry-After": "1"})


def shared_address(web, owner):
    """The owner advertises this worker's own address: another worker on another host with the
    same one (each on 127.0.0.1, or each bound to 0.0.0.0 with an address set alike). Answering
    from here would show a user this worker does not hold as unknown; it is a setting to fix."""
    return web.json({"error": f"this key's partition belongs to another worker that advertises this worker's own "
                              f"address ({owner.host}:{owner.port}); give each worker an address the others reach "
                              "(MMSR_WEB_ADVERTISED_HOST)", "retry": False}, status=502)


FORWARDED = "X-Mmsr-Forwarded"  # set on a request one worker forwards to another: it is never forwarded again


def owner_route(app, services: Services, match_info: str):
    """Faust's ``table_route`` on the key's raw bytes, answering 503 (retry) where it would fail or mislead.

    Between a worker's death and the rebalance the routing map still names the dead worker
    (Faust's route raised a 500 on the refused connection), and just after the rebalance the new
    owner may still be restoring the partition from its changelog (it would answer 404 or a
    partial state). Both are "ask again shortly", and say so.

    A request is forwarded at most once, with its own timeout (``MMSR_WEB_FORWARD_TIMEOUT``): two
    workers whose routing maps are stale and crossed would otherwise send it back and forth, each
    hop waiting on Faust's session, which has no timeout of its own.
    """
    from aiohttp import ClientError, ClientTimeout

    changelog = services.user_state.changelog_topic.get_topic_name()

    def decorate(view):
        @functools.wraps(view)
        async def routed(self, request, *args, **kwargs):
            key = request.match_info[match_info].encode()  # raw bytes, as producers key the events
            try:
                # the partition of the key's raw bytes, as producers key interactions and the state is
                # stored; Faust's route hashes the JSON-serialized key, another partition for most
                # users, and so sent half of the requests to a worker without the user
                owner = app.assignor.key_store(changelog, key)
            except KeyError:
                return retry_later(self.web, "no worker owns this key's partition yet (rebalancing)")
            if (owner.host, owner.port) == (app.conf.canonical_url.host, app.conf.canonical_url.port):
                if app.rebalancing or not services.restored.is_set():
                    return retry_later(self.web, "this worker is restoring its partitions after a rebalance")
                if not app.assignor.is_active(app.producer.key_partition(changelog, key)):
                    return shared_address(self.web, owner)
                return await view(self, request, *args, **kwargs)
            if request.headers.get(FORWARDED):
                return retry_later(self.web, "forwarded here by a worker that routes this key to this one, which "
                                             "routes it elsewhere: the routing maps disagree until the rebalance ends")
            try:
                async with app.http_client.get(request.url.with_host(owner.host).with_port(owner.port),
                                               headers={FORWARDED: "1"},
                                               timeout=ClientTimeout(total=services.settings.web_forward_timeout)
                                               ) as response:
                    return self.web.text(await response.text(), content_type=response.content_type,
                                         status=response.status)
            except (ClientError, OSError, TimeoutError) as exc:
                return retry_later(self.web, f"the owner of this key's partition does not answer ({exc}); "
                                             "the group will move it")

        return routed

    return decorate


def register_views(app, services: Services, consumer_lag: Callable[[], Awaitable[dict[str, int]]],
                   state: bool = True) -> None:
    """``state``: the views of user and item state too (not on the llm role, which holds none)."""
    if state:
        register_state_views(app, services)

    @app.page("/health")
    async def health(web, request):
        assigned = sorted(map(label, app.consumer.assignment()))
        ok = not app.rebalancing and bool(assigned) and services.restored.is_set()
        body = {"status": "ok" if ok else "starting", "rebalancing": bool(app.rebalancing),
                "restored": services.restored.is_set(), "assigned": assigned, "pending_lists": len(services.due)}
        starting = services.restored.starting_seconds()
        if starting is not None:
            body["starting_seconds"] = round(starting, 1)  # a restore that never ends shows here, growing
        return web.json(body, status=200 if ok else 503)

    @app.page("/debug/flow")
    async def flow(web, request):
        """Why a partition is not progressing (``streams.kafka.flow``)."""
        return web.json(flow_report(app))

    @app.page("/debug/flow/{topic}/{partition}")
    async def partition_flow(web, request, topic: str, partition: str):
        """One partition through Faust's and aiokafka's layers (404 where this worker lacks it)."""
        if not partition.isdigit():
            return web.json({"error": f"partition must be a number, not {partition!r}"}, status=400)
        report = partition_report(app, topic, int(partition))
        return web.json(report, status=200 if report["assigned"] else 404)

    @app.page("/metrics")
    async def metrics(web, request):
        body = services.metrics.render(await consumer_lag())
        return web.text(body.decode(), content_type="text/plain; version=0.0.4")


def register_state_views(app, services: Services) -> None:
    @app.page("/users/{user_id}")
    @owner_route(app, services, match_info="user_id")
    async def user(web, request, user_id: str):
        data = services.user_state.anywhere().get(user_id)
        if data is None:
            return web.json({"error": f"unknown user {user_id!r}"}, status=404)
        state = UserState.from_dict(data, user_id).to_dict()
        state["last_recommendation"] = services.publisher.last_recommendations.get(user_id)
        return web.json(state)

    @app.page("/items/{item_id}")
    async def item(web, request, item_id: str):
        """The item's profile (caption, its source, any image error); every worker holds them all."""
        profile = services.item_profiles.get(item_id)
        if profile is None:
            return web.json({"error": f"unknown item {item_id!r}"}, status=404)
        return web.json({k: v for k, v in profile.items() if k != "embedding"})

    @app.page("/items/{item_id}/neighbours")
    async def neighbours(web, request, item_id: str):
        """The item's co-occurrence record (count, trending, top neighbours); every worker holds them all."""
        record = services.neighbours.get(item_id)
        if record is None:
            return web.json({"error": f"no interactions with item {item_id!r}"}, status=404)
        return web.json({"item_id": item_id, **record})

