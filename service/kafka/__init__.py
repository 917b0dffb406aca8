"""Kafka plumbing: the embedded Tansu broker, topic setup, the batch producer."""
