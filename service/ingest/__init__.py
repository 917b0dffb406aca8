"""Ingestion: one validation and produce path shared by the gRPC writer and POST /v1/traffic."""
