"""Generator adapters behind one interface (`runner.generators.base.Generator`)."""
