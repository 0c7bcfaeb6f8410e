"""What every command shares: config resolvers, path and glob expansion, user-facing errors, the data-root guard."""
