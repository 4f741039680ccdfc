"""Kafka stream-processing side of mmsr: the Faust worker, topics, launcher, replay and CLI."""
