"""GET /users/{id} on a worker: answered there only when that worker holds the user's partition."""
import asyncio
import json
from types import SimpleNamespace

from yarl import URL

from streams.web import owner_route

CHANGELOG = "mmsr-user-state-changelog"


class FakeWeb:
    def json(self, body, status=200, headers=None):
        return SimpleNamespace(status=status, body=body, headers=headers or {})


def routed_view(own: str, owner: str, holds: bool, http_client=None, forward_timeout: float = 5.0):
    """The routed view of a worker at ``own`` whose group names ``owner`` for every key, holding the
    key's partition or not."""
    partition = ("t", 3)
    assignor = SimpleNamespace(key_store=lambda topic, key: URL(owner), is_active=lambda tp: holds and tp == partition)
    app = SimpleNamespace(assignor=assignor, producer=SimpleNamespace(key_partition=lambda topic, key: partition),
                          conf=SimpleNamespace(canonical_url=URL(own)), rebalancing=False, http_client=http_client)
    restored = asyncio.Event()
    restored.set()
    services = SimpleNamespace(user_state=SimpleNamespace(changelog_topic=SimpleNamespace(
        get_topic_name=lambda: CHANGELOG)), restored=restored,
        settings=SimpleNamespace(web_forward_timeout=forward_timeout))

    async def view(self, request, user_id):
        return self.web.json({"user_id": user_id, "answered_by": own})

    return owner_route(app, services, "user_id")(view)


def call(view, user_id="42"):
    request = SimpleNamespace(match_info={"user_id": user_id})
    return asyncio.run(view(SimpleNamespace(web=FakeWeb()), request, user_id))


def test_the_owner_answers_for_a_user_of_its_partition():
    response = call(routed_view("http://10.0.0.1:6066", "http://10.0.0.1:6066", holds=True))
    assert (response.status, response.body) == (200, {"user_id": "42", "answered_by": "http://10.0.0.1:6066"})


def test_a_worker_sharing_the_owners_address_says_so_instead_of_answering_for_a_user_it_lacks():
    """Two hosts' workers each on 127.0.0.1:6066 (or each bound to 0.0.0.0 and advertising it, as
    the compose file's replicas did): the owner's address is this worker's own, but the partition is
    not this worker's. Answered from here, the user would read as unknown."""
    response = call(routed_view("http://127.0.0.1:6066", "http://127.0.0.1:6066", holds=False))
    assert response.status == 502 and response.body["retry"] is False
    assert "MMSR_WEB_ADVERTISED_HOST" in response.body["error"] and "127.0.0.1:6066" in json.dumps(response.body)


class AiohttpWeb:
    """The two answers a routed view gives, as Faust's web wraps them, on plain aiohttp."""

    def json(self, body, status=200, headers=None):
        from aiohttp import web

        return web.json_response(body, status=status, headers=headers)

    def text(self, text, content_type="text/plain", status=200):
        from aiohttp import web

        return web.Response(text=text, content_type=content_type, status=status)


async def serve(view) -> tuple[object, int]:
    """A local aiohttp server for GET /users/{user_id} answered by the routed ``view``."""
    async def handler(request):
        return await view(SimpleNamespace(web=AiohttpWeb()), request, user_id=request.match_info["user_id"])

    return await serve_handler(handler)


async def serve_handler(handler) -> tuple[object, int]:
    """A local aiohttp server for GET /users/{user_id} answered by a plain aiohttp ``handler``."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/users/{user_id}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def test_crossed_routing_maps_forward_once_then_answer_503_fast():
    """Two workers whose stale maps each name the other as the owner. Each forward used to go back
    again, every hop waiting on Faust's session (no timeout of its own, 300 s by default)."""
    import time

    import aiohttp

    async def scenario():
        async with aiohttp.ClientSession() as session:
            ports = {}
            views = {}

            def view_of(name, other):
                async def lazily(self, request, user_id):  # the other's port is known once both listen
                    if name not in views:
                        views[name] = routed_view(f"http://127.0.0.1:{ports[name]}",
                                                  f"http://127.0.0.1:{ports[other]}", holds=False,
                                                  http_client=session)
                    return await views[name](self, request, user_id=user_id)
                return lazily

            runner_a, ports["a"] = await serve(view_of("a", "b"))
            runner_b, ports["b"] = await serve(view_of("b", "a"))
            try:
                start = time.monotonic()
                async with session.get(f"http://127.0.0.1:{ports['a']}/users/42",
                                       timeout=aiohttp.ClientTimeout(total=20)) as response:
                    body = await response.json()
                return response.status, body, time.monotonic() - start
            finally:
                await runner_a.cleanup()
                await runner_b.cleanup()

    status, body, seconds = asyncio.run(scenario())
    assert status == 503 and body["retry"] is True and "routing maps disagree" in body["error"]
    assert seconds < 5


def test_an_owner_that_does_not_answer_in_time_gives_503():
    import aiohttp
    from aiohttp import web

    async def scenario():
        async def slow(request):
            await asyncio.sleep(3)  # ten times the forward timeout
            return web.Response(text="late")

        runner, owner = await serve_handler(slow)
        try:
            async with aiohttp.ClientSession() as session:
                view = routed_view("http://127.0.0.1:1", f"http://127.0.0.1:{owner}", holds=False,
                                   http_client=session, forward_timeout=0.3)
                runner_front, front = await serve(view)
                try:
                    async with session.get(f"http://127.0.0.1:{front}/users/7") as response:
                        return response.status, await response.json()
                finally:
                    await runner_front.cleanup()
        finally:
            await runner.cleanup()

    status, body = asyncio.run(scenario())
    assert status == 503 and body["retry"] is True and "does not answer" in body["error"]
