"""Everything that talks to Kafka directly: the local broker launcher, topic admin and typed clients."""
