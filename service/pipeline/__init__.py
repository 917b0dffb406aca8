"""One pipeline, two logs: the writer appends batches to a log (Kafka, or a table in meterd's own
database), a consumer counts them into usage through the one flush transaction in
service.storage.ledger."""
