//! Traffic shaping for Sluice: may a message go to this destination now,
//! and if not, when?
//!
//! This crate owns the shaping rules (TOML, validated, layered default <
//! provider < domain < domain×source and cached per destination), the exact
//! limiters (token buckets equal to GCRA, counting permits), the cross-shard
//! leasing protocol that lets every shard spend a share of a limit whose home
//! is another shard, the adaptive feedback that turns delivery outcomes into
//! queue modes (backoff, suspend, bounce, optional AIMD recovery), IP
//! warm-up schedules, and importers for KumoMTA and PowerMTA shaping files.
//!
//! It never reads a clock (every call takes a [`units::Nanos`]), never does
//! I/O beyond reading a rules file on request, never sleeps, and never
//! depends on glommio: the engine drives it from its shards. Messages
//! between shards carry limit keys, shares, permits and limit changes, never
//! message bytes. A thin adapter in [`transport`] carries them over bounded
//! crossbeam channels.
//!
//! # How a shard uses it
//!
//! Each shard owns one [`Shaper`] (rules cache, mode state and a
//! [`lease::ShardShaper`]). For a destination it calls
//! [`Shaper::destination`] once, then per message
//! [`Shaper::try_acquire_message`], per connection
//! [`Shaper::try_acquire_connection`] / [`Shaper::release_connection`], and
//! per delivery attempt [`Shaper::feed_outcome`]. Its event loop calls
//! [`transport::ShardLink::pump`] (or `receive` + `poll` itself) and arms a
//! timer for [`Shaper::next_wakeup`].
//!
//! # Rules
//!
//! [`config::Rules::load`] reads a TOML file (see `examples/rules.toml`):
//! `[default]`, `[domain."example.com"]`, `[provider.NAME]` with
//! `match = [{ mx_suffix = … }, { domain_suffix = … }]`, per-source
//! overrides `[domain."x".source.NAME]`, `[source.NAME]` (bind address, EHLO
//! name, rate, warm-up), `[pool.NAME]` (weighted sources) and
//! `[warmup.NAME]` (rates by source age). Quantities are strings with units:
//! `"300/min"`, `"10/s burst 20"`, `"30s"`, `"10m,20m,1h"`,
//! `"exp(5m, x2, max 4h, jitter 20%)"`. Every problem is reported at once
//! with the file, key path and reason; [`config::validate`] is the
//! `check-config` entry point (`cargo run -p sluice-shaping --example check
//! -- FILE`). [`import`] converts KumoMTA and PowerMTA shaping files.
//!
//! # Limits across shards
//!
//! Every limit key `SCOPE/FIELD` (`provider:google/max_message_rate`,
//! `source:ip1/max_message_rate`, …) has a home shard,
//! [`lease::limit_home`]: [`lease::home_shard`] (FNV-1a 64 of the UTF-8
//! bytes modulo the shard count) of its scope. The engine routes a
//! destination domain with [`lease::domain_shard`], the same hash of
//! `domain:<domain>`, so a domain's own limits live on the shard that owns
//! its queue and cost no messages; only provider, source and pool limits,
//! which span domains, are leased across shards. The home divides a rate into
//! time-bounded shares: lease `i` gives shard `i` a fraction `r_i` of the
//! rate and `b_i` of the burst for `[start, end)`. The home only grants a
//! lease if, at every instant of its interval, the shares add up to at most
//! the whole limit; a bucket's level never rises except by refilling; and a
//! share's capacity starts empty. Together these make the tokens spent by
//! all shards in any window of length `w` at most `burst + w * rate` — the
//! same envelope as one GCRA — whatever the message delays. Shares are sized
//! by reported demand (a throttled shard doubles its ask), leases last long
//! enough to carry about `tokens_per_lease` tokens (bounded by `lease_min` and
//! `lease_max`), and a shard that did not use its share gives it back early,
//! so a shard with demand gets the rate when others are idle within one
//! lease period. Connection limits are lent as permits in batches and
//! returned when idle or recalled. Limits are reclaimed when no
//! destination uses them and they hold nothing (the home waits a further
//! burst-refill time, so a re-created limit may safely start full), so a
//! shard's memory follows the destinations in use, not every domain it
//! ever saw. A backoff restricts a limit at its home,
//! which broadcasts the new value; shares are fractions, so they stay valid
//! and every shard obeys the new value as soon as the broadcast arrives.
//!
//! # Reloading rules
//!
//! [`Shaper::replace_rules`] swaps a shard's rules while its leases,
//! permits and modes stay live; the caller validates the file once and
//! gives every shard the same rules and reload generation. A limit whose
//! configured value changed is re-based at its home ([`lease::Message::Rebase`]:
//! the newest generation wins, and every message carrying a base carries
//! its generation, so a shard that has not reloaded yet cannot bring the
//! old value back) and broadcast like a backoff change: shares are
//! fractions, so granted leases run on at the new rate; a lowered
//! connection maximum grants nothing until enough permits are released,
//! and shards keep no spare permit until the home lends again. Limits the
//! new rules no longer produce stay with the destinations holding them and
//! are reclaimed when those go; a site in backoff keeps its mode if its new
//! rules still have backoff rules, else it returns to normal at once.

#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod import;
pub mod lease;
pub mod limiter;
mod shaper;
pub mod sim;
pub mod transport;
pub mod units;

pub use shaper::{Destination, Reloaded, Shaper};
