"""The last lists the publisher keeps for GET /users/{id}: bounded by a setting, forgotten on revoke."""
from __future__ import annotations

import asyncio

from streams.events import Trigger
from streams.metrics import Metrics
from streams.services import Publisher
from streams.settings import Settings
from streams.stages.recommendations import list_record
from streams.state import UserState


class AcknowledgingTopic:
    async def send(self, key, value, partition=None):
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def lists(users: range, partition_of) -> list[dict]:
    return [list_record(UserState(f"u{u}", interaction_count=1), [("i1", 1.0, ())], "blend", "candidates:blend", 0,
                        Trigger("interactions", partition_of(u), u, None, "interaction", None))
            for u in users]


def test_the_last_lists_are_bounded_by_the_setting_and_forgotten_for_revoked_partitions():
    publisher = Publisher(Settings(last_lists_kept=5), Metrics(), {"recommendations": AcknowledgingTopic()})
    asyncio.run(publisher.recommendations(lists(range(8), lambda u: u % 2)))
    assert list(publisher.last_recommendations) == ["u3", "u4", "u5", "u6", "u7"]  # the newest five
    publisher.forget_partitions({1})  # another worker owns partition 1's users now
    assert list(publisher.last_recommendations) == ["u4", "u6"]
    publisher.forget_partitions(set())
    assert list(publisher.last_recommendations) == ["u4", "u6"]
