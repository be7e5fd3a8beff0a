"""Migration scripts, applied in order by `db.migrate.upgrade_to_head`."""
