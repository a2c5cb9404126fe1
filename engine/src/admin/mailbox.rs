//! Per-shard admin mailboxes (filled in with the admin API).
