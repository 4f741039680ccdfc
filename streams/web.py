"""Interactive queries and health on Faust's web server (127.0.0.1 unless configured).

Depends on the services and the Faust app it serves on, never on the worker that wires them.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from streams.services import Services
from streams.state import UserState


def register_views(app, services: Services, consumer_lag: Callable[[], Awaitable[dict[str, int]]]) -> None:
    @app.page("/users/{user_id}")
    @app.table_route(table=services.user_state, match_info="user_id")
    async def user(web, request, user_id: str):
        data = services.user_state.get(user_id)
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

    @app.page("/health")
    async def health(web, request):
        assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in app.consumer.assignment())
        ok = not app.rebalancing and bool(assigned) and services.restored.is_set()
        body = {"status": "ok" if ok else "starting", "rebalancing": bool(app.rebalancing),
                "restored": services.restored.is_set(), "assigned": assigned, "pending_lists": len(services.due)}
        return web.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web, request):
        body = services.metrics.render(await consumer_lag())
        return web.text(body.decode(), content_type="text/plain; version=0.0.4")
