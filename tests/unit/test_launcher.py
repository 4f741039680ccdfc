"""The launcher's cluster id must never read as a command-line option to kafka-storage."""

from streams.kafka.launcher import _cluster_id


def test_cluster_id_never_starts_with_a_dash():
    draws = iter([b"\xf8" + bytes(15), b"\x00" * 16])  # first encodes to '-AAA...', second to 'AAA...'
    cluster_id = _cluster_id(lambda: next(draws))
    assert cluster_id == "A" * 22


def test_cluster_id_is_22_urlsafe_characters():
    for _ in range(500):
        cluster_id = _cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
