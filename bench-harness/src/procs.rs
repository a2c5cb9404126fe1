//! Child processes of `sluice-bench demo`: started, watched and always stopped.
//!
//! [`Children`] owns every process the demo starts. Stopping sends SIGTERM
//! (the engine and the sink both stop gracefully on it), waits up to a grace
//! period, then SIGKILLs and reaps. `Drop` does the same, so an error, a
//! panic or Ctrl-C in the harness still leaves nothing running. Children run
//! in their own process group, so a terminal's Ctrl-C reaches only the
//! harness, which then stops them in order; and each child gets
//! `PR_SET_PDEATHSIG` = SIGTERM, so even a SIGKILLed harness takes them down.
//!
//! Also here: free loopback ports and waiting for an SMTP greeting.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Error;

/// How often a waiting loop looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Longest greeting line read while waiting for a server.
const GREETING_BYTES_MAX: usize = 1024;

/// One started process.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once reaped.
    status: Option<ExitStatus>,
}

/// How a child ended when it was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The name given at spawn.
    pub name: String,
    /// Its PID.
    pub pid: u32,
    /// True when it exited with status 0 after SIGTERM (or before).
    pub clean: bool,
    /// True when it had to be SIGKILLed.
    pub killed: bool,
    /// The exit status, as text.
    pub status: String,
}

/// The processes a demo started; stops them all on drop.
#[derive(Debug)]
pub struct Children {
    procs: Vec<Proc>,
    grace: Duration,
}

impl Children {
    /// No children yet; stopping waits up to `grace` after SIGTERM.
    pub fn new(grace: Duration) -> Self {
        Children {
            procs: Vec::new(),
            grace,
        }
    }

    /// Starts `program args...` with stdout and stderr appended to `log`.
    /// Returns its PID.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<u32, Error> {
        let out = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Io(format!("starting {name} ({}): {e}", program.display())))?;
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            status: None,
        });
        Ok(pid)
    }

    /// PIDs of every child started, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// Fails if a child has exited, naming it, its status and its log.
    pub fn check_running(&mut self) -> Result<(), Error> {
        for p in &mut self.procs {
            if p.status.is_none() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.status = Some(status);
                }
            }
            if let Some(status) = p.status {
                return Err(Error::Io(format!(
                    "{} exited early ({status}); its output is in {}:\n{}",
                    p.name,
                    p.log.display(),
                    log_tail(&p.log)
                )));
            }
        }
        Ok(())
    }

    /// Stops every child, the most recently started first: SIGTERM, wait up
    /// to the grace period, then SIGKILL. Returns how each ended; calling it
    /// again returns nothing.
    pub fn stop_all(&mut self) -> Vec<Stopped> {
        let mut stopped = Vec::with_capacity(self.procs.len());
        while let Some(mut p) = self.procs.pop() {
            stopped.push(stop_one(&mut p, self.grace));
        }
        stopped
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for s in self.stop_all() {
            if !s.clean {
                eprintln!(
                    "sluice-bench: {} (pid {}) stopped: {}{}",
                    s.name,
                    s.pid,
                    s.status,
                    if s.killed { " (SIGKILL)" } else { "" }
                );
            }
        }
    }
}

fn stop_one(p: &mut Proc, grace: Duration) -> Stopped {
    let pid = p.child.id();
    let mut killed = false;
    if p.status.is_none() {
        if let Ok(Some(status)) = p.child.try_wait() {
            p.status = Some(status);
        }
    }
    if p.status.is_none() {
        // SAFETY: kill(2) on a child we spawned and have not reaped, so the
        // PID cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while p.status.is_none() && Instant::now() < deadline {
            match p.child.try_wait() {
                Ok(Some(status)) => p.status = Some(status),
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(_) => break,
            }
        }
    }
    if p.status.is_none() {
        killed = true;
        let _ = p.child.kill();
        p.status = p.child.wait().ok();
    }
    Stopped {
        name: p.name.clone(),
        pid,
        clean: !killed && p.status.is_some_and(|s| s.success()),
        killed,
        status: p
            .status
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    const LINES: usize = 15;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LINES);
            lines[from..].join("\n")
        }
        Err(e) => format!("({e})"),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::Io(format!("finding a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Io(format!("finding a free port: {e}")))
}

/// A base port such that `base..base + count` were all free on 127.0.0.1 a
/// moment ago (for the engine's per-shard ports), avoiding `exclude`.
pub fn free_port_range(count: u16, exclude: &[u16]) -> Result<u16, Error> {
    const ATTEMPTS: u32 = 200;
    for _ in 0..ATTEMPTS {
        let base = free_port()?;
        let Some(end) = base.checked_add(count) else {
            continue;
        };
        let all_free = (base..end)
            .all(|p| !exclude.contains(&p) && TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    Err(Error::Io(format!(
        "no {count} consecutive free ports on 127.0.0.1"
    )))
}

/// Waits until `addr` answers with an SMTP `220` greeting, then says QUIT.
/// Gives up at `deadline`, when a child exits, or when `interrupt` is set.
pub fn wait_for_greeting(
    addr: SocketAddr,
    deadline: Instant,
    children: &mut Children,
    interrupt: &AtomicBool,
) -> Result<(), Error> {
    loop {
        children.check_running()?;
        if interrupt.load(Ordering::Relaxed) {
            return Err(Error::Io("interrupted while starting".into()));
        }
        let last_error = match greeting(addr) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(Error::Io(format!(
                "{addr} did not greet with 220 in time (last: {last_error})"
            )));
        }
        std::thread::sleep(POLL_INTERVAL * 5);
    }
}

fn greeting(addr: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; GREETING_BYTES_MAX];
    let mut len = 0;
    // RFC 5321 §4.2: a multiline greeting is `220-...` lines then `220 ...`.
    loop {
        let n = s.read(&mut buf[len..]).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the greeting".into());
        }
        len += n;
        let text = &buf[..len];
        if !text.starts_with(b"220") {
            return Err(format!(
                "greeting {:?}",
                String::from_utf8_lossy(&text[..len.min(80)])
            ));
        }
        let last_line_done = text.ends_with(b"\n")
            && text
                .split(|&b| b == b'\n')
                .rev()
                .nth(1)
                .is_some_and(|line| line.get(3) == Some(&b' ') || line.len() <= 4);
        if last_line_done {
            let _ = s.write_all(b"QUIT\r\n");
            return Ok(());
        }
        if len == buf.len() {
            return Err("greeting longer than 1 KiB".into());
        }
    }
}

/// True when a process with this PID exists (zombies count as gone).
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A directory removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<system temp>/<prefix>-<pid>-<n>` with mode 0700.
    pub fn new(prefix: &str) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        const ATTEMPTS: u32 = 100;
        let base = std::env::temp_dir();
        for n in 0..ATTEMPTS {
            let path = base.join(format!("{prefix}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::Io(format!(
            "no free temporary directory name under {}",
            base.display()
        )))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_stopped_by_drop_and_sigterm_counts_as_clean_when_it_exits_0() {
        let dir = TempDir::new("sluice-bench-procs").unwrap();
        let log = dir.path().join("sleep.log");
        let mut children = Children::new(Duration::from_secs(5));
        // `trap 'exit 0' TERM` makes SIGTERM a clean exit, like the engine.
        let pid = children
            .spawn(
                "sh",
                Path::new("/bin/sh"),
                &[
                    "-c".into(),
                    "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done".into(),
                ],
                &log,
            )
            .unwrap();
        // SIGTERM before the trap is set would kill the shell by the signal.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready")) {
            assert!(Instant::now() < deadline, "the shell never started");
            std::thread::sleep(POLL_INTERVAL);
        }
        assert!(pid_running(pid));
        children.check_running().unwrap();
        let stopped = children.stop_all();
        assert_eq!(stopped.len(), 1);
        assert!(stopped[0].clean, "{stopped:?}");
        assert!(!pid_running(pid));

        let pid = children
            .spawn("sleep", Path::new("/bin/sleep"), &["30".into()], &log)
            .unwrap();
        drop(children);
        assert!(!pid_running(pid));
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let dir = TempDir::new("sluice-bench-procs").unwrap();
        let log = dir.path().join("false.log");
        let mut children = Children::new(Duration::from_secs(1));
        children
            .spawn(
                "failing",
                Path::new("/bin/sh"),
                &["-c".into(), "echo broken config; exit 3".into()],
                &log,
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match children.check_running() {
                Err(e) => break e.to_string(),
                Ok(()) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(()) => panic!("the child did not exit"),
            }
        };
        assert!(err.contains("failing exited early"), "{err}");
        assert!(err.contains("broken config"), "{err}");
    }

    #[test]
    fn greeting_waits_for_220() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"220-first\r\n220 ready\r\n").unwrap();
            let mut quit = [0u8; 6];
            s.read_exact(&mut quit).unwrap();
            quit
        });
        let mut children = Children::new(Duration::from_secs(1));
        let stop = AtomicBool::new(false);
        wait_for_greeting(
            addr,
            Instant::now() + Duration::from_secs(10),
            &mut children,
            &stop,
        )
        .unwrap();
        assert_eq!(&server.join().unwrap(), b"QUIT\r\n");

        let port = free_port().unwrap();
        let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let err = wait_for_greeting(closed, Instant::now(), &mut children, &stop).unwrap_err();
        assert!(err.to_string().contains("did not greet"), "{err}");
        let base = free_port_range(3, &[]).unwrap();
        assert!(base.checked_add(3).is_some());
    }
}
