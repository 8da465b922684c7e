"""Host tests with real workers running real tiny guests."""
