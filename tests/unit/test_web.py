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


def routed_view(own: str, owner: str, holds: bool):
    """The routed view of a worker at ``own`` whose group names ``owner`` for every key, holding the
    key's partition or not."""
    partition = ("t", 3)
    assignor = SimpleNamespace(key_store=lambda topic, key: URL(owner), is_active=lambda tp: holds and tp == partition)
    app = SimpleNamespace(assignor=assignor, producer=SimpleNamespace(key_partition=lambda topic, key: partition),
                          conf=SimpleNamespace(canonical_url=URL(own)), rebalancing=False)
    restored = asyncio.Event()
    restored.set()
    services = SimpleNamespace(user_state=SimpleNamespace(changelog_topic=SimpleNamespace(
        get_topic_name=lambda: CHANGELOG)), restored=restored)

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
