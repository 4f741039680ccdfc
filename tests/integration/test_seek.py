"""The seek Faust makes after clearing its stream buffers, on the real broker: it has to bring a
partition back before the cleared records, whatever the partition's committed offset is."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.patches.correctness import seek_to_committed_or_reset

pytestmark = pytest.mark.integration

RECORDS = 10


def topic_with_records(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 1, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(RECORDS):
        producer.produce(name, key=b"k", value=str(n).encode())
    assert producer.flush(30) == 0


async def read_to_the_end(client: AIOKafkaConsumer, tp: TopicPartition) -> None:
    """Records fetched and handed over, as Faust's buffers get them before a clear."""
    while await client.position(tp) < RECORDS:
        await client.getmany(tp, timeout_ms=1000)


def test_a_partition_with_no_commit_or_a_commit_at_0_is_rewound_and_others_go_to_their_commit(kafka_broker):
    stream, changelog = f"seek-{uuid.uuid4().hex[:8]}", f"seek-{uuid.uuid4().hex[:8]}-changelog"
    for name in (stream, changelog):
        topic_with_records(kafka_broker.bootstrap, name)
    tp, changelog_tp = TopicPartition(stream, 0), TopicPartition(changelog, 0)

    async def run() -> dict:
        client = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=f"g-{stream}",
                                  enable_auto_commit=False, auto_offset_reset="earliest")
        await client.start()
        positions = {}
        try:
            client.assign([tp, changelog_tp])

            def is_changelog(p):
                return p.topic == changelog

            for name in ("never", "aiokafka alone, never"):
                for p in (tp, changelog_tp):
                    await read_to_the_end(client, p)
                if name == "never":
                    committed = await seek_to_committed_or_reset(client, is_changelog, "earliest")
                    assert committed == {tp: None, changelog_tp: None}
                else:  # what Faust gets without the change: left past the cleared records
                    await client.seek_to_committed()
                positions[name] = (await client.position(tp), await client.position(changelog_tp))
            for at in (0, 4):
                await client.commit({tp: OffsetAndMetadata(at, "")})
                await read_to_the_end(client, tp)
                await seek_to_committed_or_reset(client, is_changelog, "earliest")
                positions[f"committed {at}"] = await client.position(tp)
            await client.seek_to_end(tp)
            await client.commit({tp: OffsetAndMetadata(0, "")})
            await client.seek_to_committed()
            positions["aiokafka alone, committed 0"] = await client.position(tp)
        finally:
            await client.stop()
        return positions

    positions = asyncio.run(run())
    assert positions["never"] == (0, RECORDS)  # the stream partition rewound, the changelog left to recovery
    assert positions["aiokafka alone, never"] == (RECORDS, RECORDS)
    assert positions["committed 0"] == 0 and positions["aiokafka alone, committed 0"] == RECORDS
    assert positions["committed 4"] == 4


def test_with_the_latest_policy_a_partition_with_no_commit_keeps_its_position(kafka_broker):
    stream = f"seek-{uuid.uuid4().hex[:8]}"
    topic_with_records(kafka_broker.bootstrap, stream)
    tp = TopicPartition(stream, 0)

    async def run() -> tuple[int, int]:
        client = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=f"g-{stream}",
                                  enable_auto_commit=False, auto_offset_reset="latest")
        await client.start()
        try:
            client.assign([tp])
            await client.seek_to_beginning(tp)
            await read_to_the_end(client, tp)
            before = await client.position(tp)
            await seek_to_committed_or_reset(client, lambda p: False, "latest")
            return before, await client.position(tp)
        finally:
            await client.stop()

    assert asyncio.run(run()) == (RECORDS, RECORDS)
