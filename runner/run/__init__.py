"""One run: build the components, train (warm-up, meta phase, SSL phase), evaluate, checkpoint, log."""
