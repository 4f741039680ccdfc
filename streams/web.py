"""Interactive queries and health on Faust's web server (127.0.0.1 unless configured)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from streams.state import UserState

if TYPE_CHECKING:
    from streams.app import Worker


def register_views(worker: "Worker") -> None:
    app = worker.app

    @app.page("/users/{user_id}")
    @app.table_route(table=worker.user_state, match_info="user_id")
    async def user(web, request, user_id: str):
        data = worker.user_state.get(user_id)
        if data is None:
            return web.json({"error": f"unknown user {user_id!r}"}, status=404)
        state = UserState.from_dict(data, user_id).to_dict()
        state["last_recommendation"] = worker.last_recommendations.get(user_id)
        return web.json(state)

    @app.page("/items/{item_id}")
    async def item(web, request, item_id: str):
        """The item's profile (caption, its source, any image error); every worker holds them all."""
        profile = worker.item_profiles.get(item_id)
        if profile is None:
            return web.json({"error": f"unknown item {item_id!r}"}, status=404)
        return web.json({k: v for k, v in profile.items() if k != "embedding"})

    @app.page("/health")
    async def health(web, request):
        consumer = app.consumer
        assigned = sorted(f"{tp.topic}/{tp.partition}" for tp in consumer.assignment())
        ok = not app.rebalancing and bool(assigned)
        body = {"status": "ok" if ok else "starting", "rebalancing": bool(app.rebalancing),
                "assigned": assigned, "pending_lists": len(worker.debouncer)}
        return web.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(web, request):
        text = worker.metrics.render(await worker.consumer_lag())
        return web.text(text, content_type="text/plain; version=0.0.4")
