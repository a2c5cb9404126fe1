//! One shard's life: recover, restore, serve, stop (see the module docs of
//! [`crate::runtime`]).

// std
use std::cell::RefCell;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// external
use glommio::net::TcpListener;
use sluice_spool::fs::FsStorage;
use sluice_spool::{NoSync, RecoveryReport, SpoolConfig};

// crate
use super::{
    ShardContext, ShardListeners, ShardReport, ShardSpool, Shutdown, DRAIN_TIMEOUT, STOP_POLL,
};
use crate::config::{Config, Durability};
use crate::deliver::{self, DeliveryStats, ShapingLink};
use crate::inject::recovering::{Responder, RECOVERING_REPLY};
use crate::inject::{accept_loop, Injector};
use crate::queue::{QueueConfig, Queues, Sites};

/// The spool settings of shard `index`.
pub fn spool_config(config: &Config, index: u32) -> SpoolConfig {
    SpoolConfig {
        shard: index,
        segment_bytes: usize::try_from(config.segment_bytes).unwrap_or(usize::MAX),
        commit_window: config.commit_window,
        sync_threshold_bytes: usize::try_from(config.commit_bytes)
            .unwrap_or(usize::MAX)
            .max(1),
        durability: match config.durability {
            Durability::Fdatasync => sluice_spool::Durability::Fdatasync,
            Durability::NoneUnsafe => {
                sluice_spool::Durability::None(NoSync::i_accept_losing_mail_on_crash())
            }
        },
        spare_segments: config.spare_segments,
        ..SpoolConfig::default()
    }
}

fn open_spool(config: &Config, index: u32) -> Result<(ShardSpool, RecoveryReport), String> {
    let storage =
        FsStorage::open(&config.spool_dir, index).map_err(|e| format!("opening the spool: {e}"))?;
    ShardSpool::open(storage, spool_config(config, index))
        .map_err(|e| format!("recovering the spool: {e}"))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs shard `index` until the stop flag is set.
// Each argument is a distinct per-shard handle built by `Engine::start`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    index: u32,
    count: u32,
    config: Rc<Config>,
    listeners: ShardListeners,
    shaping: ShapingLink,
    stop: Arc<AtomicBool>,
    mailbox: std::sync::mpsc::Receiver<crate::admin::mailbox::Request>,
    admin_state: crate::admin::state::AdminState,
) -> Result<ShardReport, String> {
    let responder = Responder::start(index, listeners.into_vec(), RECOVERING_REPLY)
        .map_err(|e| format!("starting the recovering responder: {e}"))?;
    let started = Instant::now();
    // Blocking, on this shard's thread: the spool is single-threaded. The
    // responder answers 421 4.3.2 on our sockets meanwhile.
    let opened = open_spool(&config, index);
    let (spool, recovery) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = responder.finish();
            return Err(e);
        }
    };
    log::info!(
        "shard {index}: spool opened in {:?}: {} live message(s), {} quarantined record(s), {} torn byte(s) truncated",
        started.elapsed(),
        spool.live_count(),
        recovery.quarantined_records,
        recovery.truncated_bytes
    );
    let sync_task = spool.spawn_sync_task();
    let queue_cfg = QueueConfig::from_settings(&config.delivery);
    let queues = Rc::new(RefCell::new(Queues::new(
        Sites::from_routes(&config.routes),
        queue_cfg.clone(),
    )));
    // Max age by the shaping rules from the first destination on, restored
    // ones included (delivery installs its cached lookup when it starts).
    let max_age_rules = shaping.rules.clone();
    queues
        .borrow_mut()
        .set_max_age_lookup(Box::new(move |domain| {
            max_age_rules.effective(domain, &[], None).max_age
        }));
    let recovered = restore(index, &spool, &queues).await;
    // The operator's standing orders (suspensions, reroutes, timed
    // bounces) are in force before delivery starts (admin::state).
    let orders = crate::admin::mailbox::Orders::from_state(
        &admin_state,
        &mut queues.borrow_mut(),
        now_unix_ms(),
    );
    let shutdown = Shutdown::new();
    let ctx = ShardContext {
        index,
        count,
        config: Rc::clone(&config),
        spool: spool.clone(),
        queues: Rc::clone(&queues),
        shutdown: shutdown.clone(),
    };
    let (delivery, delivery_shared) = deliver::start_shared(ctx.delivery_context(), Some(shaping));
    let inj = Injector::new(
        index,
        Rc::clone(&ctx.config),
        spool.clone(),
        Rc::clone(&queues),
        shutdown.clone(),
        queue_cfg.max_age,
        queue_cfg.recipients_max,
    );
    let (sockets, refused) = responder
        .finish()
        .map_err(|e| format!("taking the sockets back from the recovering responder: {e}"))?;
    let mut acceptors = Vec::with_capacity(sockets.len());
    for s in sockets {
        // SAFETY: the fd comes from a listening std TcpListener whose
        // ownership moves into glommio here; nothing else closes it.
        let l = unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) };
        acceptors.push(glommio::spawn_local(accept_loop(Rc::clone(&inj), l)));
    }
    if let Some(t) = crate::inject::implicit_tls_acceptor(&inj)? {
        acceptors.push(t);
    }
    // The admin mailbox, drained off the hot path (`admin::mailbox`).
    let admin_task = glommio::spawn_local(crate::admin::mailbox::serve(
        crate::admin::mailbox::ShardHandles {
            delivery: delivery_shared,
            inject: Rc::clone(&inj),
            spool: spool.clone(),
            queues: Rc::clone(&queues),
            shutdown: shutdown.clone(),
        },
        mailbox,
        orders,
    ));
    log::info!("shard {index}: serving ({recovered} message(s) restored, {refused} connection(s) refused while recovering)");

    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    log::info!("shard {index}: stopping");
    shutdown.trigger();
    admin_task.await;
    for a in acceptors {
        a.await;
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while (inj.open_connections() > 0 || inj.commits_in_flight() > 0) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if inj.open_connections() > 0 {
        log::warn!(
            "shard {index}: {} connection(s) still open after {DRAIN_TIMEOUT:?}; closing them",
            inj.open_connections()
        );
    }
    // Delivery finishes what it has in flight (bounded by its own drain
    // timeout) and writes its log; completions it records are covered by
    // the final sync below.
    let delivered: DeliveryStats = delivery.await;
    if let Some(signer) = &inj.signer {
        let d = signer.stats();
        log::info!(
            "shard {index}: DKIM: {} message(s) signed, {} unsigned (no key for the From domain), \
             {} unsigned (From names no single domain), {} signature(s) larger than the headroom",
            d.signed,
            d.no_key,
            d.failed,
            d.moved
        );
    }
    drop(ctx);
    spool.close();
    sync_task.await;
    Ok(ShardReport {
        shard: index,
        recovered,
        refused_while_recovering: refused,
        inject: inj.stats(),
        delivery: delivered,
    })
}

/// Puts every live spool message back into the queues, yielding to the
/// executor between messages when other tasks need it.
async fn restore(index: u32, spool: &ShardSpool, queues: &Rc<RefCell<Queues>>) -> u64 {
    let now = now_unix_ms();
    let mut restored = 0u64;
    for live in spool.live_messages() {
        match queues.borrow_mut().restore(spool, &live, now) {
            Ok(_) => restored += 1,
            Err(e) => log::error!(
                "shard {index}: message {} stays in the spool but is not queued: {e}",
                live.id
            ),
        }
        glommio::yield_if_needed().await;
    }
    restored
}
