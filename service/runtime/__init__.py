"""Process assembly: which roles run, their servers, start-up order and graceful drain."""
