"""Kafka: client configuration, the embedded local broker, the producer and exact offset ranges."""
