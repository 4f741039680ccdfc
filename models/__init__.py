"""Model side of mmsr. Imports neither Kafka nor Faust, so it runs alone on a GPU machine."""
