"""Speed tables: our phases, each speed choice against its alternative, the reference."""
